package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/nbdroot/nbdroot/initramfs"
)

// mkinitHost is a synthetic host for mkinitramfs: a module tree holding
// the nbd module, and a minimal static ELF binary.
type mkinitHost struct {
	dir, modules, binary string
}

func newMkinitHost(t *testing.T) mkinitHost {
	t.Helper()
	dir := t.TempDir()
	h := mkinitHost{dir: dir, modules: filepath.Join(dir, "modules"), binary: filepath.Join(dir, "nbdroot")}
	tree := filepath.Join(h.modules, "6.1.0-test")
	files := map[string]string{
		"modules.dep":                 "kernel/drivers/block/nbd.ko:\nkernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko\nkernel/lib/crc16.ko:\n",
		"modules.builtin":             "kernel/net/packet/af_packet.ko\n",
		"kernel/drivers/block/nbd.ko": "nbd",
		"kernel/fs/ext4/ext4.ko":      "ext4",
		"kernel/lib/crc16.ko":         "crc16",
	}
	for name, data := range files {
		p := filepath.Join(tree, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	elf := make([]byte, 4096)
	copy(elf, "\x7fELF\x02\x01\x01")
	binary.LittleEndian.PutUint16(elf[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(elf[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(elf[20:], 1)
	binary.LittleEndian.PutUint16(elf[52:], 64)
	binary.LittleEndian.PutUint16(elf[54:], 56)
	binary.LittleEndian.PutUint16(elf[58:], 64)
	if err := os.WriteFile(h.binary, elf, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func runMkinit(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"nbdroot", "mkinitramfs"}, args...), stdio{&out, &errb})
	return code, out.String(), errb.String()
}

func TestMkinitramfsFlagErrors(t *testing.T) {
	h := newMkinitHost(t)
	out := filepath.Join(h.dir, "out.img")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no output", []string{"--binary", h.binary}, "-o FILE is required"},
		{"unknown flag", []string{"-o", out, "--frobnicate"}, "frobnicate"},
		{"extra argument", []string{"-o", out, "stray"}, `unexpected argument "stray"`},
		{"kver and kernel", []string{"-o", out, "--kver", "6.1", "--kernel", "/boot/vmlinuz"}, "mutually exclusive"},
		{"output and modules-only", []string{"-o", out, "--modules-only", h.dir}, "mutually exclusive"},
		{"bad compression", []string{"-o", out, "--compress", "lz4"}, `"lz4"`},
		{"relative file destination", []string{"-o", out, "--file", "a:etc/a"}, "must be absolute"},
		{"relative file without destination", []string{"-o", out, "--file", "a"}, "source must be absolute"},
		{"empty module", []string{"-o", out, "--module", ""}, "empty value"},
		{"base-only and modules-only", []string{"--base-only", "-o", out, "--modules-only", h.dir}, "mutually exclusive"},
		{"base-only and binary", []string{"--base-only", "-o", out, "--binary", h.binary}, "--binary has nothing to do"},
		{"base-only without output", []string{"--base-only"}, "-o FILE is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runMkinit(tt.args...)
			if code != 2 {
				t.Errorf("exit status %d, want 2 (stderr %q)", code, stderr)
			}
			if !strings.HasPrefix(stderr, "nbdroot: mkinitramfs: ") || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr %q, want one line containing %q", stderr, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
		})
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("an image was written")
	}
}

func TestMkinitramfsRuntimeErrors(t *testing.T) {
	h := newMkinitHost(t)
	out := filepath.Join(h.dir, "out.img")
	for _, args := range [][]string{
		{"-o", out, "--binary", h.binary, "--modules-dir", h.modules, "--module", "nosuch"},
		{"-o", out, "--binary", h.binary, "--modules-dir", h.modules, "--kernel", h.binary},
		{"-o", out, "--binary", filepath.Join(h.dir, "absent"), "--modules-dir", h.modules},
	} {
		code, _, stderr := runMkinit(args...)
		if code != 1 || !strings.HasPrefix(stderr, "nbdroot: mkinitramfs: ") {
			t.Errorf("%q: exit %d, stderr %q; want 1 and an error", args, code, stderr)
		}
	}
	ents, _ := os.ReadDir(h.dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "out.img") {
			t.Errorf("%s left behind after failures", e.Name())
		}
	}
}

func TestMkinitramfsHelp(t *testing.T) {
	code, stdout, _ := runMkinit("-h")
	if code != 0 || !strings.Contains(stdout, "usage: nbdroot mkinitramfs") || !strings.Contains(stdout, "-compress") {
		t.Errorf("-h: exit %d, stdout %q", code, stdout)
	}
}

func TestMkinitramfsWrites(t *testing.T) {
	h := newMkinitHost(t)
	extra := filepath.Join(h.dir, "motd")
	if err := os.WriteFile(extra, []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(h.dir, "initrd.img")
	code, stdout, stderr := runMkinit("-o", out, "--binary", h.binary, "--modules-dir", h.modules,
		"--module", "ext4", "--file", extra+":/etc/motd")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{
		"binary    " + h.binary + " (4.0 KiB) as /init\n",
		"kernel    6.1.0-test (" + filepath.Join(h.modules, "6.1.0-test") + ")\n",
		"modules   3 modules (1 KiB); built in: af_packet; not available: ",
		"files     1: /etc/motd\n",
		"wrote     " + out + ": ",
		"(gzip of ",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	names := readCPIO(t, out)
	for name, mode := range map[string]uint64{
		"init":        cpio.S_IFREG | 0o755,
		"dev/console": cpio.S_IFCHR | 0o600,
		"etc/motd":    cpio.S_IFREG | 0o644,
		"lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko":      cpio.S_IFREG | 0o644,
		"lib/modules/6.1.0-test/kernel/lib/crc16.ko":         cpio.S_IFREG | 0o644,
		"lib/modules/6.1.0-test/kernel/drivers/block/nbd.ko": cpio.S_IFREG | 0o644,
	} {
		if got, ok := names[name]; !ok || got != mode {
			t.Errorf("%s: mode %#o (present %v), want %#o", name, got, ok, mode)
		}
	}

	// --modules-only writes the same module tree into a directory.
	dir := filepath.Join(h.dir, "tree")
	code, stdout, stderr = runMkinit("--modules-only", dir, "--modules-dir", h.modules, "--kver", "6.1.0-test", "--module", "ext4")
	if code != 0 {
		t.Fatalf("--modules-only: exit %d, stderr %q", code, stderr)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "lib/modules/6.1.0-test/kernel/lib/crc16.ko")); err != nil || string(b) != "crc16" {
		t.Errorf("--modules-only: crc16.ko = %q, %v (stdout %q)", b, err, stdout)
	}
}

func TestMkinitramfsConfigError(t *testing.T) {
	h := newMkinitHost(t)
	cfg := filepath.Join(h.dir, "nbdroot.toml")
	if err := os.WriteFile(cfg, []byte("[device]\nblock_size = 3000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runMkinit("-o", filepath.Join(h.dir, "out.img"), "--binary", h.binary, "--modules-dir", h.modules, "--config", cfg)
	if code != 2 || !strings.Contains(stderr, cfg+":2: device.block_size") {
		t.Errorf("exit %d, stderr %q; want 2 and the spec error", code, stderr)
	}
}

func TestMkinitramfsShell(t *testing.T) {
	h := newMkinitHost(t)
	busybox := filepath.Join(h.dir, "busybox")
	if err := os.Link(h.binary, busybox); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(h.dir, "initrd.img")
	code, stdout, stderr := runMkinit("-o", out, "--binary", h.binary, "--modules-dir", h.modules, "--shell", busybox, "--compress", "none")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if want := fmt.Sprintf("shell     %s (4.0 KiB) as /bin/busybox; %d links\n", busybox, len(initramfs.BusyboxApplets())+2); !strings.Contains(stdout, want) {
		t.Errorf("stdout lacks %q:\n%s", want, stdout)
	}
	recs := readCPIO(t, out)
	for name, mode := range map[string]uint64{
		"init":        cpio.S_IFREG | 0o755,
		"bin/busybox": cpio.S_IFREG | 0o755,
		"bin/sh":      cpio.S_IFLNK | 0o777,
		"bin/nbdroot": cpio.S_IFLNK | 0o777,
		"bin/mount":   cpio.S_IFLNK | 0o777,
	} {
		if got, ok := recs[name]; !ok || got != mode {
			t.Errorf("%s: mode %#o (present %v), want %#o", name, got, ok, mode)
		}
	}
}

func TestMkinitramfsBaseOnly(t *testing.T) {
	h := newMkinitHost(t)
	out := filepath.Join(h.dir, "base.cpio")
	code, stdout, stderr := runMkinit("--base-only", "-o", out, "--modules-dir", h.modules, "--module", "ext4")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"binary    none: a base archive (u-root: -base " + out + " -initcmd=nbdroot", "(none, ", "modules   3 modules"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	// Uncompressed, as u-root's -base reads it.
	recs := readCPIO(t, out)
	if _, ok := recs["init"]; ok {
		t.Error("the base archive has /init")
	}
	for _, name := range []string{"dev/console", "lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko", "lib/modules/6.1.0-test/modules.dep"} {
		if _, ok := recs[name]; !ok {
			t.Errorf("the base archive lacks %s", name)
		}
	}
	// --compress still applies when given.
	code, stdout, stderr = runMkinit("--base-only", "-o", out, "--modules-dir", h.modules, "--compress", "gzip")
	if code != 0 || !strings.Contains(stdout, "(gzip of ") {
		t.Errorf("--compress gzip: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// readCPIO reads the uncompressed archive at path into names and modes.
func readCPIO(t *testing.T, path string) map[string]uint64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(data)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	names := map[string]uint64{}
	for _, r := range recs {
		names[r.Name] = r.Mode
	}
	return names
}
