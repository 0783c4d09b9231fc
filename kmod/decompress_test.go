package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

func TestUncompressed(t *testing.T) {
	for _, tc := range []struct {
		file, want string
		compressed bool
	}{
		{"kernel/fs/ext4/ext4.ko", "kernel/fs/ext4/ext4.ko", false},
		{"kernel/fs/ext4/ext4.ko.xz", "kernel/fs/ext4/ext4.ko", true},
		{"kernel/fs/ext4/ext4.ko.zst", "kernel/fs/ext4/ext4.ko", true},
		{"kernel/fs/ext4/ext4.ko.gz", "kernel/fs/ext4/ext4.ko", true},
		{"kernel/fs/ext4/ext4.ko.bz2", "kernel/fs/ext4/ext4.ko.bz2", false},
		{"modules.dep.gz", "modules.dep.gz", false},
	} {
		got, compressed := Uncompressed(tc.file)
		if got != tc.want || compressed != tc.compressed {
			t.Errorf("Uncompressed(%q) = %q, %v; want %q, %v", tc.file, got, compressed, tc.want, tc.compressed)
		}
	}
}

// TestReadModule reads a module file compressed each way depmod may find
// it, with the real xz(1) and zstd(1), and checks the errors for a corrupt
// file and a missing tool.
func TestReadModule(t *testing.T) {
	dir := t.TempDir()
	image := bytes.Repeat([]byte("\x7fELF module image "), 4096)
	plain := filepath.Join(dir, "m.ko")
	if err := os.WriteFile(plain, image, 0o644); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(image)
	zw.Close()
	if err := os.WriteFile(plain+".gz", gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	testrig.Need(t, "xz", "zstd")
	for _, tool := range [][]string{{"xz", "-k", "--", plain}, {"zstd", "-qk", "--", plain}} {
		if out, err := exec.Command(tool[0], tool[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", tool, err, out)
		}
	}
	ctx := context.Background()
	for _, name := range []string{"m.ko", "m.ko.gz", "m.ko.xz", "m.ko.zst"} {
		got, err := ReadModule(ctx, filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, image) {
			t.Errorf("ReadModule(%s) = %d bytes, %v; want the %d-byte image", name, len(got), err, len(image))
		}
	}

	bad := filepath.Join(dir, "bad.ko.xz")
	if err := os.WriteFile(bad, []byte("not xz"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadModule(ctx, bad); err == nil || !strings.Contains(err.Error(), bad+": xz -d: exit status 1: ") {
		t.Errorf("ReadModule(a corrupt .xz) = %v; want the file, xz and its message", err)
	}
	badGz := filepath.Join(dir, "bad.ko.gz")
	if err := os.WriteFile(badGz, []byte("not gzip"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadModule(ctx, badGz); err == nil || !strings.HasPrefix(err.Error(), badGz+": ") {
		t.Errorf("ReadModule(a corrupt .gz) = %v; want an error naming the file", err)
	}

	t.Setenv("PATH", t.TempDir())
	want := filepath.Join(dir, "m.ko.zst") + ": decompressing it needs zstd(1), which is not installed"
	if _, err := ReadModule(ctx, filepath.Join(dir, "m.ko.zst")); err == nil || err.Error() != want {
		t.Errorf("ReadModule without zstd = %v; want %q", err, want)
	}
}
