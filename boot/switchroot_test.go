package boot

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDeleteTreeKeeps frees an initramfs-like tree as switch_root does and
// checks that the kept top-level directory (the exitrd's stage), and only
// it, survives with its contents, including a hard link to a deleted file.
func TestDeleteTreeKeeps(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"init", "lib/modules/m.ko", "etc/nbdroot.toml", ".exitrd/oldroot/.keep", "a/.exitrd/x"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(root, "init"), filepath.Join(root, ".exitrd", "nbdroot")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	deleteTree(fd, st.Dev, ".exitrd")
	var left []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if p != root {
			rel, _ := filepath.Rel(root, p)
			left = append(left, rel)
		}
		return nil
	})
	// Only the top level's name is kept: a/.exitrd goes with a.
	want := []string{".exitrd", ".exitrd/nbdroot", ".exitrd/oldroot", ".exitrd/oldroot/.keep"}
	if !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if b, err := os.ReadFile(filepath.Join(root, ".exitrd", "nbdroot")); err != nil || string(b) != "init" {
		t.Errorf("the kept link reads %q, %v", b, err)
	}
}
