package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testKver = "6.1.0-test"

// testDep is the synthetic modules.dep: a chain whose file lists only
// direct dependencies (chain1 → chain2 → chain3), a cycle, a module whose
// file name uses '-', a compressed module and one that nothing needs.
const testDep = `kernel/a/alpha.ko: kernel/b/beta-mod.ko kernel/c/gamma.ko
kernel/b/beta-mod.ko: kernel/c/gamma.ko
kernel/c/gamma.ko:
kernel/d/cyc_one.ko: kernel/d/cyc-two.ko
kernel/d/cyc-two.ko: kernel/d/cyc_one.ko
kernel/e/unused.ko:
kernel/f/zipped.ko.gz: kernel/c/gamma.ko
kernel/g/chain1.ko: kernel/g/chain2.ko
kernel/g/chain2.ko: kernel/g/chain3.ko
kernel/g/chain3.ko:
`

// writeTree writes a module tree for kernel kver under modulesDir: the
// given modules.dep, one small file per module and the other metadata.
func writeTree(t *testing.T, modulesDir, kver, dep string) string {
	t.Helper()
	dir := filepath.Join(modulesDir, kver)
	files := map[string]string{
		"modules.dep":     dep,
		"modules.builtin": "kernel/net/packet/af_packet.ko\nkernel/fs/built-in_fs.ko\n",
		"modules.alias": "# Aliases extracted from modules themselves.\n" +
			"alias pci:v00001AF4d* alpha\nalias fs-beta beta_mod\nalias fs-unused unused\nalias crypto-cyc cyc_two\n",
		"modules.softdep": "# Soft dependencies extracted from modules themselves.\nsoftdep alpha pre: crypto-cyc\nsoftdep unused pre: gamma\n",
	}
	var order strings.Builder
	for line := range strings.Lines(dep) {
		mod, _, _ := strings.Cut(line, ":")
		files[mod] = "module " + mod + "\n"
		order.WriteString(mod + "\n")
	}
	files["modules.order"] = order.String()
	for name, data := range files {
		if strings.HasSuffix(name, ".ko.gz") {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write([]byte(data))
			zw.Close()
			data = b.String()
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func modulePaths(c *Closure) []string {
	var ps []string
	for _, m := range c.Modules {
		ps = append(ps, m.Path)
	}
	return ps
}

func TestModuleClosure(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, testKver, testDep)
	tests := []struct {
		name               string
		required, optional []string
		want               []string // module paths, modules.dep order
		builtin, missing   []string
	}{
		{name: "deps", required: []string{"alpha"},
			want: []string{"kernel/a/alpha.ko", "kernel/b/beta-mod.ko", "kernel/c/gamma.ko"}},
		{name: "underscore names a dash file", required: []string{"beta_mod"},
			want: []string{"kernel/b/beta-mod.ko", "kernel/c/gamma.ko"}},
		{name: "dash names an underscore file", required: []string{"cyc-one"},
			want: []string{"kernel/d/cyc_one.ko", "kernel/d/cyc-two.ko"}},
		{name: "cycle from the other end", required: []string{"cyc_two"},
			want: []string{"kernel/d/cyc_one.ko", "kernel/d/cyc-two.ko"}},
		{name: "transitive chain", required: []string{"chain1"},
			want: []string{"kernel/g/chain1.ko", "kernel/g/chain2.ko", "kernel/g/chain3.ko"}},
		{name: "compressed module", required: []string{"zipped"},
			want: []string{"kernel/c/gamma.ko", "kernel/f/zipped.ko.gz"}},
		{name: "builtin", required: []string{"af-packet", "built_in-fs"},
			builtin: []string{"af_packet", "built_in_fs"}},
		{name: "optional missing is skipped", required: []string{"gamma"}, optional: []string{"nosuch", "af_packet", "gamma", "no-such2"},
			want: []string{"kernel/c/gamma.ko"}, builtin: []string{"af_packet"}, missing: []string{"no_such2", "nosuch"}},
		{name: "nothing", optional: []string{"x"}, missing: []string{"x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ModuleClosure(root, testKver, tt.required, tt.optional)
			if err != nil {
				t.Fatal(err)
			}
			if got := modulePaths(c); !slices.Equal(got, tt.want) {
				t.Errorf("modules = %q, want %q", got, tt.want)
			}
			if !slices.Equal(c.Builtin, tt.builtin) {
				t.Errorf("builtin = %q, want %q", c.Builtin, tt.builtin)
			}
			if !slices.Equal(c.Missing, tt.missing) {
				t.Errorf("missing = %q, want %q", c.Missing, tt.missing)
			}
			if c.KernelVersion != testKver || c.Dir != filepath.Join(root, testKver) {
				t.Errorf("closure is for %s in %s", c.KernelVersion, c.Dir)
			}
		})
	}
}

func TestModuleClosureNames(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, testKver, testDep)
	c, err := ModuleClosure(root, testKver, []string{"alpha", "zipped"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Names(), []string{"alpha", "beta_mod", "gamma", "zipped"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
}

func TestModuleClosureErrors(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, testKver, testDep)
	writeTree(t, root, "dangling", "kernel/a.ko: kernel/b.ko\n")
	writeTree(t, root, "malformed", "kernel/a.ko: \nkernel/b.ko kernel/c.ko\n")
	writeTree(t, root, "escape", "kernel/a.ko: ../../etc/passwd\n")
	tests := []struct {
		name, kver string
		required   []string
		want       []string // substrings of the error
	}{
		{"unknown required", testKver, []string{"alpha", "no-such", "other"}, []string{"no_such, other", "modules.dep"}},
		{"no tree", "9.9.9", []string{"alpha"}, []string{"no modules for kernel 9.9.9", filepath.Join(root, "9.9.9", "modules.dep")}},
		{"dangling dependency", "dangling", []string{"a"}, []string{"kernel/a.ko depends on kernel/b.ko"}},
		{"malformed line", "malformed", []string{"a"}, []string{"modules.dep:2:", "malformed"}},
		{"path escapes the tree", "escape", []string{"a"}, []string{"modules.dep:1:", "../../etc/passwd"}},
		{"version with a slash", "../x", nil, []string{"not a directory name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ModuleClosure(root, tt.kver, tt.required, nil)
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

func TestClosureMetadata(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, testKver, testDep)
	c, err := ModuleClosure(root, testKver, []string{"alpha", "cyc_one"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := c.metadata()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range meta {
		got[f.name] = string(f.data)
	}
	want := map[string]string{
		"modules.dep": "kernel/a/alpha.ko: kernel/b/beta-mod.ko kernel/c/gamma.ko\n" +
			"kernel/b/beta-mod.ko: kernel/c/gamma.ko\n" +
			"kernel/c/gamma.ko:\n" +
			"kernel/d/cyc_one.ko: kernel/d/cyc-two.ko\n" +
			"kernel/d/cyc-two.ko: kernel/d/cyc_one.ko\n",
		"modules.order": "kernel/a/alpha.ko\nkernel/b/beta-mod.ko\nkernel/c/gamma.ko\nkernel/d/cyc_one.ko\nkernel/d/cyc-two.ko\n",
		"modules.alias": "# Aliases extracted from modules themselves.\n" +
			"alias pci:v00001AF4d* alpha\nalias fs-beta beta_mod\nalias crypto-cyc cyc_two\n",
		"modules.softdep": "# Soft dependencies extracted from modules themselves.\nsoftdep alpha pre: crypto-cyc\n",
		"modules.builtin": "kernel/net/packet/af_packet.ko\nkernel/fs/built-in_fs.ko\n",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s =\n%s\nwant\n%s", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("metadata files %v, want %d", slices.Sorted(maps.Keys(got)), len(want))
	}

	// The trimmed modules.dep is a modules.dep: the closure computed from
	// it is the same.
	trimmed := t.TempDir()
	writeTree(t, trimmed, testKver, got["modules.dep"])
	c2, err := ModuleClosure(trimmed, testKver, []string{"alpha", "cyc_one"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(modulePaths(c2), modulePaths(c)) {
		t.Errorf("closure from trimmed modules.dep = %q, want %q", modulePaths(c2), modulePaths(c))
	}
}

func TestCompareVersions(t *testing.T) {
	ordered := []string{
		"5.10.0-9-amd64",
		"5.10.0-10-amd64",
		"6.1.0",
		"6.1.0-9-amd64",
		"6.1.0-56-amd64",
		"6.1.0-56-amd64+",
		"6.1.10",
		"6.9.12",
		"6.10.0",
		"6.10.0-1",
		"10.0",
	}
	for i, a := range ordered {
		for j, b := range ordered {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := CompareVersions(a, b); got != want {
				t.Errorf("CompareVersions(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
	if CompareVersions("6.01", "6.1") != 0 {
		t.Error("leading zeros should not matter")
	}
}

func TestNewestKernel(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"6.9.12-amd64", "6.10.0-amd64", "6.2.0-amd64"} {
		writeTree(t, root, v, "kernel/a.ko:\n")
	}
	// A directory without modules.dep is not a module tree.
	if err := os.MkdirAll(filepath.Join(root, "7.0.0-amd64", "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := NewestKernel(root)
	if err != nil {
		t.Fatal(err)
	}
	if got != "6.10.0-amd64" {
		t.Errorf("NewestKernel = %q, want 6.10.0-amd64", got)
	}

	empty := t.TempDir()
	if _, err := NewestKernel(empty); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("NewestKernel(empty dir) error = %v, want one naming %s", err, empty)
	}
	if _, err := NewestKernel(filepath.Join(empty, "nope")); err == nil {
		t.Error("NewestKernel(missing dir) succeeded")
	}
}

// TestWriteCompressedModule checks that a compressed module goes into the
// image decompressed, under the name without the suffix, and that the
// image's modules.dep and modules.order name it so; a corrupt one fails
// the build naming the module and the file.
func TestWriteCompressedModule(t *testing.T) {
	f := newFixture(t)
	opts := f.options(None)
	opts.Modules = append(opts.Modules, "zipped")
	data, rep := writeImage(t, opts)
	_, contents := readArchive(t, data)
	tree := "lib/modules/" + testKver + "/"
	if got := string(contents[tree+"kernel/f/zipped.ko"]); got != "module kernel/f/zipped.ko.gz\n" {
		t.Errorf("kernel/f/zipped.ko = %q, want the module decompressed", got)
	}
	if _, ok := contents[tree+"kernel/f/zipped.ko.gz"]; ok {
		t.Error("the image holds the compressed file too")
	}
	if dep := string(contents[tree+"modules.dep"]); !strings.Contains(dep, "\nkernel/f/zipped.ko: kernel/c/gamma.ko\n") || strings.Contains(dep, ".gz") {
		t.Errorf("modules.dep does not name zipped.ko uncompressed:\n%s", dep)
	}
	if order := string(contents[tree+"modules.order"]); !strings.Contains(order, "kernel/f/zipped.ko\n") || strings.Contains(order, ".gz") {
		t.Errorf("modules.order does not name zipped.ko uncompressed:\n%s", order)
	}
	if want := int64(len("module kernel/f/zipped.ko.gz\n")); rep.ModuleBytes < want {
		t.Errorf("report: %d module bytes", rep.ModuleBytes)
	}

	zipped := filepath.Join(f.modulesDir, testKver, "kernel/f/zipped.ko.gz")
	if err := os.WriteFile(zipped, []byte("not gzip"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Write(context.Background(), io.Discard, opts)
	if err == nil || !strings.Contains(err.Error(), "module zipped: "+zipped+": ") {
		t.Errorf("Write with a corrupt compressed module = %v; want an error naming the module and its file", err)
	}
}
