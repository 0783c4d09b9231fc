package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/testrig"
)

// fakeELF returns an x86-64 ELF executable header followed by filler up
// to size bytes. With interp it has a PT_INTERP program header, as a
// dynamically linked program does.
func fakeELF(size int, interp string) []byte {
	const ehsize, phsize = 64, 56
	b := make([]byte, max(size, 512))
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[58:], 64) // e_shentsize
	filler := b[ehsize:]
	if interp != "" {
		le.PutUint64(b[32:], ehsize) // e_phoff
		le.PutUint16(b[56:], 1)      // e_phnum
		ph := b[ehsize:]
		le.PutUint32(ph[0:], 3) // PT_INTERP
		le.PutUint32(ph[4:], 4) // PF_R
		le.PutUint64(ph[8:], 256)
		le.PutUint64(ph[32:], uint64(len(interp)+1))
		le.PutUint64(ph[40:], uint64(len(interp)+1))
		copy(b[256:], interp+"\x00")
		filler = b[512:]
	}
	// Deterministic, poorly compressible filler, like machine code.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range filler {
		filler[i] = byte(rng.Uint32())
	}
	return b
}

// fixture is a synthetic host: a module tree, a binary and extra files.
type fixture struct {
	modulesDir, binary, extra string
	binaryData                []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{
		modulesDir: filepath.Join(dir, "modules"),
		binary:     filepath.Join(dir, "nbdroot"),
		extra:      filepath.Join(dir, "extra.conf"),
		binaryData: fakeELF(64<<10, ""),
	}
	writeTree(t, f.modulesDir, testKver, testDep)
	if err := os.WriteFile(f.binary, f.binaryData, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.extra, []byte("extra\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) options(c Compression) Options {
	return Options{
		Binary:        f.binary,
		KernelVersion: testKver,
		ModulesDir:    f.modulesDir,
		BaseModules:   []string{"gamma", "af_packet", "not-here"},
		Modules:       []string{"alpha", "cyc-one"},
		Files:         []File{{Src: f.extra, Dst: "/etc/extra/extra.conf"}},
		Compression:   c,
	}
}

// decompress undoes the archive's compression: gzip here, zstd and xz
// with the tools, independent of the ones that compressed it.
func decompress(t *testing.T, data []byte, c Compression) []byte {
	t.Helper()
	switch c {
	case None:
		return data
	case Gzip:
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("decompressing %s: %v", c, err)
		}
		return out
	}
	testrig.Need(t, string(c))
	cmd := exec.Command(string(c), "-dc")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s -dc: %v", c, err)
	}
	return out
}

// readArchive parses a newc archive into its records, in order, with their
// contents.
func readArchive(t *testing.T, data []byte) ([]cpio.Record, map[string][]byte) {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(data)))
	if err != nil {
		t.Fatalf("reading the archive: %v", err)
	}
	contents := map[string][]byte{}
	for _, r := range recs {
		b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			t.Fatal(err)
		}
		contents[r.Name] = b
	}
	return recs, contents
}

func writeImage(t *testing.T, opts Options) ([]byte, *Report) {
	t.Helper()
	var buf bytes.Buffer
	r, err := Write(context.Background(), &buf, opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if r.Size != int64(buf.Len()) {
		t.Errorf("Report.Size = %d, wrote %d bytes", r.Size, buf.Len())
	}
	return buf.Bytes(), r
}

func TestWriteContents(t *testing.T) {
	f := newFixture(t)
	data, rep := writeImage(t, f.options(None))
	recs, contents := readArchive(t, data)

	byName := map[string]cpio.Record{}
	var names []string
	inos := map[uint64]string{}
	for _, r := range recs {
		byName[r.Name] = r
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want all 0", r.Name, r.MTime, r.UID, r.GID)
		}
		if other, dup := inos[r.Ino]; dup || r.Ino == 0 {
			t.Errorf("%s: inode %d (also %q)", r.Name, r.Ino, other)
		}
		inos[r.Ino] = r.Name
		// Every parent directory comes first.
		for d := path.Dir(r.Name); d != "."; d = path.Dir(d) {
			p, ok := byName[d]
			if !ok || p.Mode&cpio.S_IFMT != cpio.S_IFDIR {
				t.Errorf("%s comes before its directory %s", r.Name, d)
			}
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("records are not sorted: %q", names)
	}

	modes := map[string]uint64{
		"init":                 cpio.S_IFREG | 0o755,
		"dev":                  cpio.S_IFDIR | 0o755,
		"proc":                 cpio.S_IFDIR | 0o555,
		"sys":                  cpio.S_IFDIR | 0o555,
		"run":                  cpio.S_IFDIR | 0o755,
		"tmp":                  cpio.S_IFDIR | 0o1777,
		"etc":                  cpio.S_IFDIR | 0o755,
		"root":                 cpio.S_IFDIR | 0o700,
		"dev/console":          cpio.S_IFCHR | 0o600,
		"dev/null":             cpio.S_IFCHR | 0o666,
		"etc/extra":            cpio.S_IFDIR | 0o755,
		"etc/extra/extra.conf": cpio.S_IFREG | 0o640,
	}
	tree := "lib/modules/" + testKver
	for _, m := range []string{"kernel/a/alpha.ko", "kernel/b/beta-mod.ko", "kernel/c/gamma.ko", "kernel/d/cyc_one.ko", "kernel/d/cyc-two.ko",
		"modules.dep", "modules.order", "modules.alias", "modules.softdep", "modules.builtin"} {
		modes[tree+"/"+m] = cpio.S_IFREG | 0o644
	}
	modes[tree] = cpio.S_IFDIR | 0o755
	for name, mode := range modes {
		r, ok := byName[name]
		if !ok {
			t.Errorf("%s is missing", name)
			continue
		}
		if r.Mode != mode {
			t.Errorf("%s: mode %#o, want %#o", name, r.Mode, mode)
		}
	}
	for name := range byName {
		if _, ok := modes[name]; !ok && !strings.HasPrefix(name, tree+"/kernel") && name != "lib" && name != "lib/modules" {
			t.Errorf("unexpected entry %s", name)
		}
	}
	for _, absent := range []string{"kernel/e/unused.ko", "kernel/f/zipped.ko.gz", "kernel/f/zipped.ko", "kernel/g/chain1.ko"} {
		if _, ok := byName[tree+"/"+absent]; ok {
			t.Errorf("%s is in the image but nothing needs it", absent)
		}
	}
	for name, dev := range map[string][2]uint64{"dev/console": {5, 1}, "dev/null": {1, 3}} {
		if r := byName[name]; r.Rmajor != dev[0] || r.Rminor != dev[1] {
			t.Errorf("%s is %d:%d, want %d:%d", name, r.Rmajor, r.Rminor, dev[0], dev[1])
		}
	}
	if !bytes.Equal(contents["init"], f.binaryData) {
		t.Error("/init differs from the binary")
	}
	if got := string(contents[tree+"/kernel/c/gamma.ko"]); got != "module kernel/c/gamma.ko\n" {
		t.Errorf("gamma.ko = %q", got)
	}
	if got := string(contents["etc/extra/extra.conf"]); got != "extra\n" {
		t.Errorf("extra.conf = %q", got)
	}
	if got := string(contents[tree+"/modules.dep"]); !strings.HasPrefix(got, "kernel/a/alpha.ko: kernel/b/beta-mod.ko kernel/c/gamma.ko\n") || strings.Contains(got, "unused") {
		t.Errorf("modules.dep = %q", got)
	}

	if rep.KernelVersion != testKver || rep.Binary != f.binary || rep.BinarySize != int64(len(f.binaryData)) {
		t.Errorf("report: kernel %q binary %q (%d bytes)", rep.KernelVersion, rep.Binary, rep.BinarySize)
	}
	if want := []string{"alpha", "beta_mod", "cyc_one", "cyc_two", "gamma"}; !slices.Equal(rep.Modules, want) {
		t.Errorf("report modules %q, want %q", rep.Modules, want)
	}
	if !slices.Equal(rep.Builtin, []string{"af_packet"}) || !slices.Equal(rep.Missing, []string{"not_here"}) {
		t.Errorf("report builtin %q missing %q", rep.Builtin, rep.Missing)
	}
	if !slices.Equal(rep.Files, []string{"/etc/extra/extra.conf"}) {
		t.Errorf("report files %q", rep.Files)
	}
	var moduleBytes int64
	for name, b := range contents {
		if strings.HasSuffix(name, ".ko") {
			moduleBytes += int64(len(b))
		}
	}
	if rep.ModuleBytes != moduleBytes {
		t.Errorf("report module bytes %d, want %d", rep.ModuleBytes, moduleBytes)
	}
	if rep.Entries != len(recs) || rep.ArchiveSize != int64(len(data)) || rep.Size != rep.ArchiveSize {
		t.Errorf("report: %d entries, archive %d bytes, size %d; read %d records from %d bytes", rep.Entries, rep.ArchiveSize, rep.Size, len(recs), len(data))
	}
}

func TestWriteCompressionRoundTrip(t *testing.T) {
	f := newFixture(t)
	plain, _ := writeImage(t, f.options(None))
	for _, c := range []Compression{Gzip, Zstd, Xz} {
		t.Run(string(c), func(t *testing.T) {
			data, rep := writeImage(t, f.options(c))
			if rep.Compression != c {
				t.Errorf("report compression %q", rep.Compression)
			}
			got := decompress(t, data, c)
			if !bytes.Equal(got, plain) {
				t.Errorf("decompressed %s archive (%d bytes) differs from the uncompressed one (%d bytes)", c, len(got), len(plain))
			}
			if rep.ArchiveSize != int64(len(plain)) {
				t.Errorf("report archive size %d, want %d", rep.ArchiveSize, len(plain))
			}
			if c == Gzip {
				// No name, no time: FLG has no FNAME and MTIME is zero.
				if data[3]&0x08 != 0 || binary.LittleEndian.Uint32(data[4:8]) != 0 {
					t.Errorf("gzip header carries a name or time: % x", data[:10])
				}
			}
			if c == Xz {
				// Stream flags: check type 0x01, CRC32, the one the
				// kernel's decoder knows besides none.
				if data[7] != 0x01 {
					t.Errorf("xz stream flags % x: check type %#x, want CRC32 (0x01)", data[6:8], data[7])
				}
			}
			if c == Zstd {
				// The frame's window, which the kernel's unpacker
				// allocates while the machine boots: the Window_Descriptor
				// after the magic and the frame header descriptor (RFC
				// 8878 3.1.1.1.2), present since zstd reads a pipe.
				if len(data) < 6 || data[4]&0x20 != 0 {
					t.Fatalf("zstd frame header % x: no window descriptor", data[:min(len(data), 6)])
				}
				exp, mantissa := data[5]>>3, data[5]&7
				base := uint64(1) << (10 + exp)
				if window := base + base/8*uint64(mantissa); window > 4<<20 {
					t.Errorf("zstd window %d bytes, want at most 4 MiB (zstd -15)", window)
				}
			}
		})
	}
	// Empty compression means gzip.
	opts := f.options("")
	data, rep := writeImage(t, opts)
	if rep.Compression != Gzip || !bytes.Equal(decompress(t, data, Gzip), plain) {
		t.Errorf("default compression is %q", rep.Compression)
	}
}

func TestWriteDeterministic(t *testing.T) {
	for _, c := range []Compression{Gzip, Zstd, Xz, None} {
		t.Run(string(c), func(t *testing.T) {
			f := newFixture(t)
			a, _ := writeImage(t, f.options(c))
			// Different timestamps and a second fixture on other paths
			// with the same contents give the same bytes.
			g := newFixture(t)
			time1 := time.Unix(1_000_000_000, 0)
			for _, p := range []string{g.binary, g.extra, filepath.Join(g.modulesDir, testKver, "kernel/a/alpha.ko")} {
				if err := os.Chtimes(p, time1, time1); err != nil {
					t.Fatal(err)
				}
			}
			b, _ := writeImage(t, g.options(c))
			if !bytes.Equal(a, b) {
				t.Errorf("two runs differ (%d and %d bytes)", len(a), len(b))
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	f := newFixture(t)
	dynamic := filepath.Join(t.TempDir(), "dynamic")
	if err := os.WriteFile(dynamic, fakeELF(4096, "/lib64/ld-linux-x86-64.so.2"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(*Options)
		want   []string
	}{
		{"unknown module", func(o *Options) { o.Modules = append(o.Modules, "nosuch") }, []string{"nosuch"}},
		{"dynamic binary", func(o *Options) { o.Binary = dynamic }, []string{dynamic, "dynamically linked", "/lib64/ld-linux-x86-64.so.2", "CGO_ENABLED=0"}},
		{"not ELF", func(o *Options) { o.Binary = script }, []string{script, "not an ELF"}},
		{"no binary", func(o *Options) { o.Binary = "" }, []string{"no nbdroot binary"}},
		{"missing file", func(o *Options) { o.Files = []File{{Src: "/nonexistent/x", Dst: "/x"}} }, []string{"/nonexistent/x"}},
		{"file over /init", func(o *Options) { o.Files = []File{{Src: f.extra, Dst: "/init"}} }, []string{"/init is wanted twice", "the nbdroot binary", f.extra}},
		{"file over a directory", func(o *Options) { o.Files = []File{{Src: f.extra, Dst: "/tmp/"}} }, []string{"/tmp is wanted twice"}},
		{"file over a parent directory", func(o *Options) { o.Files = []File{{Src: f.extra, Dst: "/lib"}} }, []string{"/lib is wanted as a file", f.extra, "/lib/modules/"}},
		{"file at the root", func(o *Options) { o.Files = []File{{Src: f.extra, Dst: "/"}} }, []string{"names the root"}},
		{"relative destination", func(o *Options) { o.Files = []File{{Src: f.extra, Dst: "etc/x"}} }, []string{"not absolute"}},
		{"directory source", func(o *Options) { o.Files = []File{{Src: f.modulesDir, Dst: "/m"}} }, []string{f.modulesDir, "not a regular file"}},
		{"bad compression", func(o *Options) { o.Compression = "lz4" }, []string{`"lz4"`}},
		{"module file missing", func(o *Options) {
			if err := os.Remove(filepath.Join(f.modulesDir, testKver, "kernel/c/gamma.ko")); err != nil {
				t.Fatal(err)
			}
		}, []string{"module gamma", "gamma.ko"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := f.options(Gzip)
			tt.modify(&opts)
			var buf bytes.Buffer
			_, err := Write(context.Background(), &buf, opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if buf.Len() != 0 {
				t.Errorf("%d bytes written despite the error", buf.Len())
			}
		})
	}
}

func TestWriteCanceled(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Write(ctx, io.Discard, f.options(None)); err != context.Canceled {
		t.Errorf("Write with a canceled context: %v", err)
	}
}

func TestWriteNewestKernel(t *testing.T) {
	f := newFixture(t)
	writeTree(t, f.modulesDir, "6.0.0-test", "kernel/c/gamma.ko:\n")
	opts := f.options(None)
	opts.KernelVersion = ""
	_, rep := writeImage(t, opts)
	if rep.KernelVersion != testKver {
		t.Errorf("picked kernel %q, want %q", rep.KernelVersion, testKver)
	}
}

func TestWriteModuleTree(t *testing.T) {
	f := newFixture(t)
	out := t.TempDir()
	rep, err := WriteModuleTree(context.Background(), out, f.options(Gzip))
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(out, "lib/modules", testKver)
	for _, p := range []string{"kernel/a/alpha.ko", "kernel/d/cyc-two.ko", "modules.dep", "modules.builtin"} {
		src := filepath.Join(f.modulesDir, testKver, p)
		want, _ := os.ReadFile(src)
		got, err := os.ReadFile(filepath.Join(tree, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if p != "modules.dep" && !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s", p, src)
		}
	}
	for _, p := range []string{"kernel/e/unused.ko", "../../../init", "../../../dev"} {
		if _, err := os.Stat(filepath.Join(tree, p)); err == nil {
			t.Errorf("%s was written", p)
		}
	}
	if len(rep.Modules) != 5 || rep.Binary != "" {
		t.Errorf("report: modules %q binary %q", rep.Modules, rep.Binary)
	}
}

func TestParseCompression(t *testing.T) {
	for _, s := range []string{"gzip", "zstd", "xz", "none"} {
		if c, err := ParseCompression(s); err != nil || string(c) != s {
			t.Errorf("ParseCompression(%q) = %q, %v", s, c, err)
		}
	}
	for _, s := range []string{"", "GZIP", "lz4", "xz "} {
		if _, err := ParseCompression(s); err == nil {
			t.Errorf("ParseCompression(%q) succeeded", s)
		}
	}
}

// TestDebianKernel builds the default image against the installed Debian
// kernel and reports its size.
func TestDebianKernel(t *testing.T) {
	kver, err := NewestKernel("")
	requireReal(t, "a kernel module tree in /lib/modules", err == nil)

	c, err := ModuleClosure("", kver, nil, config.BaseModules())
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, m := range c.Modules {
		paths[path.Base(m.Path)] = true
	}
	for _, want := range []string{"nbd.ko", "ext4.ko", "jbd2.ko", "mbcache.ko", "crc16.ko", "virtio_net.ko", "virtio.ko", "virtio_ring.ko", "virtio-rng.ko", "crc32c_generic.ko", "overlay.ko"} {
		if !paths[want] {
			t.Errorf("default closure lacks %s", want)
		}
	}
	if !slices.Contains(c.Builtin, "af_packet") {
		t.Errorf("af_packet is not reported built in: builtin %q missing %q", c.Builtin, c.Missing)
	}
	t.Logf("kernel %s: %d modules, built in %q, not available %q", kver, len(c.Modules), c.Builtin, c.Missing)

	bin := filepath.Join(t.TempDir(), "nbdroot")
	if err := os.WriteFile(bin, fakeELF(10<<20, ""), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, comp := range []Compression{Gzip, Zstd} {
		data, rep := writeImage(t, Options{Binary: bin, KernelVersion: kver, Compression: comp})
		_, contents := readArchive(t, decompress(t, data, comp))
		if _, ok := contents["lib/modules/"+kver+"/kernel/drivers/block/nbd.ko"]; !ok {
			t.Errorf("%s image lacks nbd.ko", comp)
		}
		t.Logf("%s: %d modules (%d KiB) + 10 MiB incompressible binary: %d KiB compressed, %d KiB archive",
			comp, len(rep.Modules), rep.ModuleBytes>>10, rep.Size>>10, rep.ArchiveSize>>10)
	}
}

func TestWriteConfig(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	tls := map[string]string{"ca": "ca-cert.pem", "cert": "client-cert.pem", "key": "client-key.pem"}
	var toml strings.Builder
	toml.WriteString("[tls]\n")
	for key, name := range tls {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("PEM "+name), 0o600); err != nil {
			t.Fatal(err)
		}
		tls[key] = p
		toml.WriteString(key + " = " + strconv.Quote(p) + "\n")
	}
	toml.WriteString("[boot]\nmodules = [\"zipped\"]\n")
	cfg := filepath.Join(dir, "nbdroot.toml")
	if err := os.WriteFile(cfg, []byte(toml.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	opts := f.options(None)
	opts.ConfigFile = cfg
	data, rep := writeImage(t, opts)
	recs, contents := readArchive(t, data)
	modes := map[string]uint64{}
	for _, r := range recs {
		modes[r.Name] = r.Mode
	}
	want := map[string]uint64{
		"etc/nbdroot.toml": cpio.S_IFREG | 0o644,
		name(tls["ca"]):    cpio.S_IFREG | 0o644,
		name(tls["cert"]):  cpio.S_IFREG | 0o644,
		name(tls["key"]):   cpio.S_IFREG | 0o600,
		"lib/modules/" + testKver + "/kernel/f/zipped.ko": cpio.S_IFREG | 0o644,
	}
	for n, m := range want {
		if modes[n] != m {
			t.Errorf("%s: mode %#o, want %#o", n, modes[n], m)
		}
	}
	if string(contents["etc/nbdroot.toml"]) != toml.String() {
		t.Errorf("/etc/nbdroot.toml = %q", contents["etc/nbdroot.toml"])
	}
	if string(contents[name(tls["key"])]) != "PEM client-key.pem" {
		t.Errorf("key = %q", contents[name(tls["key"])])
	}
	if rep.Config != cfg || len(rep.TLSFiles) != 3 || !slices.Contains(rep.Modules, "zipped") {
		t.Errorf("report: config %q TLS files %q modules %q", rep.Config, rep.TLSFiles, rep.Modules)
	}
}

func TestWriteConfigErrors(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	tests := []struct {
		name, toml string
		spec       bool // a *config.Error
		want       []string
	}{
		{"unknown key", "[device]\nblock_sise = 512\n", true, []string{"block_sise"}},
		{"bad value", "[device]\nblock_size = 3000\n", true, []string{"block_size"}},
		{"missing TLS file", "[tls]\nca = \"/nonexistent/ca.pem\"\n", false, []string{"/nonexistent/ca.pem", "tls.ca"}},
		{"unknown boot module", "[boot]\nmodules = [\"nosuch\"]\n", false, []string{"nosuch"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".toml")
			if err := os.WriteFile(cfg, []byte(tt.toml), 0o644); err != nil {
				t.Fatal(err)
			}
			opts := f.options(None)
			opts.ConfigFile = cfg
			_, err := Write(context.Background(), io.Discard, opts)
			if err == nil {
				t.Fatal("no error")
			}
			if config.IsSpecError(err) != tt.spec {
				t.Errorf("IsSpecError = %v, want %v: %v", !tt.spec, tt.spec, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.spec && !strings.Contains(err.Error(), cfg) {
				t.Errorf("error %q does not name %s", err, cfg)
			}
		})
	}
	opts := f.options(None)
	opts.ConfigFile = filepath.Join(dir, "absent.toml")
	if _, err := Write(context.Background(), io.Discard, opts); err == nil || !strings.Contains(err.Error(), "absent.toml") {
		t.Errorf("absent config: %v", err)
	}
}

// name is the archive name of an absolute host path.
func name(p string) string { return strings.TrimPrefix(filepath.ToSlash(p), "/") }

// TestWriteCompressorErrors checks what a missing or failing compressing
// program gives: an error naming the program, and no process left behind
// (Write closes the program's input on every path, so it ends).
func TestWriteCompressorErrors(t *testing.T) {
	f := newFixture(t)
	t.Run("not installed", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := Write(context.Background(), io.Discard, f.options(Zstd))
		if want := "zstd compression needs zstd(1), which is not installed"; err == nil || err.Error() != want {
			t.Errorf("Write = %v, want %q", err, want)
		}
	})
	t.Run("fails", func(t *testing.T) {
		// An xz that exits at once with a message, as a full disk or a bad
		// option would make it.
		bin := t.TempDir()
		if err := os.WriteFile(filepath.Join(bin, "xz"), []byte("#!/bin/sh\necho 'xz: out of memory' >&2\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
		_, err := Write(context.Background(), io.Discard, f.options(Xz))
		if err == nil || !strings.Contains(err.Error(), "xz: exit status 1: xz: out of memory") {
			t.Errorf("Write = %v, want xz's exit status and message", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		testrig.Need(t, "zstd")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Write(ctx, io.Discard, f.options(Zstd)); err == nil {
			t.Error("Write with a cancelled context succeeded")
		}
	})
}
