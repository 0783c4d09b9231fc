package initramfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// archiveIndex reads an uncompressed archive into records by name and
// their contents.
func archiveIndex(t *testing.T, data []byte) (map[string]cpio.Record, map[string][]byte) {
	t.Helper()
	recs, contents := readArchive(t, data)
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	return byName, contents
}

// wantLink fails unless name is a symbolic link to target.
func wantLink(t *testing.T, byName map[string]cpio.Record, contents map[string][]byte, name, target string) {
	t.Helper()
	r, ok := byName[name]
	if !ok {
		t.Errorf("%s is missing", name)
		return
	}
	if r.Mode != cpio.S_IFLNK|0o777 || string(contents[name]) != target {
		t.Errorf("%s: mode %#o -> %q, want a link to %q", name, r.Mode, contents[name], target)
	}
}

func TestWriteBusyboxShell(t *testing.T) {
	f := newFixture(t)
	busybox := filepath.Join(t.TempDir(), "busybox")
	bb := fakeELF(8<<10, "")
	if err := os.WriteFile(busybox, bb, 0o700); err != nil {
		t.Fatal(err)
	}
	// An extra file at an applet's path wins over the applet link.
	opts := f.options(None)
	opts.Files = append(opts.Files, File{Src: f.extra, Dst: "/bin/ls"})
	opts.Shell = busybox
	data, rep := writeImage(t, opts)
	byName, contents := archiveIndex(t, data)

	if r := byName["bin/busybox"]; r.Mode != cpio.S_IFREG|0o755 || !bytes.Equal(contents["bin/busybox"], bb) {
		t.Errorf("bin/busybox: mode %#o, %d bytes; want the shell, mode 0755", r.Mode, len(contents["bin/busybox"]))
	}
	wantLink(t, byName, contents, "bin/sh", "busybox")
	wantLink(t, byName, contents, "bin/nbdroot", "../init")
	for _, a := range BusyboxApplets() {
		if a != "ls" {
			wantLink(t, byName, contents, "bin/"+a, "busybox")
		}
	}
	if r := byName["bin/ls"]; r.Mode != cpio.S_IFREG|0o640 || string(contents["bin/ls"]) != "extra\n" {
		t.Errorf("bin/ls: mode %#o %q; want the extra file", r.Mode, contents["bin/ls"])
	}
	if r := byName["bin"]; r.Mode != cpio.S_IFDIR|0o755 {
		t.Errorf("bin: mode %#o", r.Mode)
	}
	// A link's target is the record's content: the kernel reads it so.
	if r := byName["bin/sh"]; r.FileSize != uint64(len("busybox")) {
		t.Errorf("bin/sh: size %d", r.FileSize)
	}
	if rep.Shell != busybox || rep.ShellPath != BusyboxPath || rep.ShellSize != int64(len(bb)) {
		t.Errorf("report: shell %q at %q, %d bytes", rep.Shell, rep.ShellPath, rep.ShellSize)
	}
	// sh, every applet but ls, and nbdroot.
	if want := len(BusyboxApplets()) + 1; len(rep.Links) != want || !slices.Contains(rep.Links, "/bin/nbdroot -> ../init") {
		t.Errorf("report: %d links %q, want %d", len(rep.Links), rep.Links, want)
	}
	if _, ok := byName["init"]; !ok {
		t.Error("init is missing")
	}
}

func TestWriteOtherShell(t *testing.T) {
	f := newFixture(t)
	gosh := filepath.Join(t.TempDir(), "gosh")
	sh := fakeELF(4<<10, "")
	if err := os.WriteFile(gosh, sh, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := f.options(None)
	opts.Shell = gosh
	data, rep := writeImage(t, opts)
	byName, contents := archiveIndex(t, data)
	if r := byName["bin/sh"]; r.Mode != cpio.S_IFREG|0o755 || !bytes.Equal(contents["bin/sh"], sh) {
		t.Errorf("bin/sh: mode %#o; want the shell", r.Mode)
	}
	wantLink(t, byName, contents, "bin/nbdroot", "../init")
	for name := range byName {
		if strings.HasPrefix(name, "bin/") && name != "bin/sh" && name != "bin/nbdroot" {
			t.Errorf("unexpected %s", name)
		}
	}
	if rep.ShellPath != ShellPath || !slices.Equal(rep.Links, []string{"/bin/nbdroot -> ../init"}) {
		t.Errorf("report: shell at %q, links %q", rep.ShellPath, rep.Links)
	}
}

func TestWriteShellErrors(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	dynamic := filepath.Join(dir, "busybox")
	if err := os.WriteFile(dynamic, fakeELF(4096, "/lib64/ld-linux-x86-64.so.2"), 0o755); err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "sh")
	if err := os.WriteFile(static, fakeELF(4096, ""), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(*Options)
		want   []string
	}{
		{"dynamic shell", func(o *Options) { o.Shell = dynamic }, []string{"shell " + dynamic, "dynamically linked", "busybox-static"}},
		{"missing shell", func(o *Options) { o.Shell = filepath.Join(dir, "absent") }, []string{"absent"}},
		{"file over /bin/sh", func(o *Options) {
			o.Shell = static
			o.Files = []File{{Src: f.extra, Dst: "/bin/sh"}}
		}, []string{"/bin/sh is wanted twice", "the shell"}},
		{"file over /bin/nbdroot", func(o *Options) {
			o.Shell = static
			o.Files = []File{{Src: f.extra, Dst: "/bin/nbdroot"}}
		}, []string{"/bin/nbdroot is wanted twice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := f.options(None)
			tt.modify(&opts)
			_, err := Write(context.Background(), io.Discard, opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestWriteBaseOnly: the base archive is the image without /init, and no
// binary is needed.
func TestWriteBaseOnly(t *testing.T) {
	f := newFixture(t)
	full, _ := writeImage(t, f.options(None))
	fullNames, _ := archiveIndex(t, full)

	opts := f.options(None)
	opts.Binary = ""
	opts.BaseOnly = true
	data, rep := writeImage(t, opts)
	byName, _ := archiveIndex(t, data)
	if _, ok := byName["init"]; ok {
		t.Error("the base archive has /init")
	}
	for name := range fullNames {
		if _, ok := byName[name]; !ok && name != "init" {
			t.Errorf("the base archive lacks %s", name)
		}
	}
	if len(byName) != len(fullNames)-1 {
		t.Errorf("base archive has %d entries, the image %d", len(byName), len(fullNames))
	}
	if rep.Binary != "" || rep.BinarySize != 0 {
		t.Errorf("report: binary %q (%d bytes)", rep.Binary, rep.BinarySize)
	}

	// A shell in a base archive: no /bin/nbdroot (the base has no /init;
	// the builder that brings nbdroot puts it on the PATH).
	sh := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(sh, fakeELF(4096, ""), 0o755); err != nil {
		t.Fatal(err)
	}
	opts.Shell = sh
	data, _ = writeImage(t, opts)
	byName, _ = archiveIndex(t, data)
	if _, ok := byName["bin/nbdroot"]; ok {
		t.Error("the base archive links /bin/nbdroot to an /init it does not have")
	}
	if _, ok := byName["bin/busybox"]; !ok {
		t.Error("the base archive lacks its shell")
	}
}
