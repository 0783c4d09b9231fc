package shutdown

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFreeInitramfsKeeps frees an initramfs-like tree and checks that the
// stage (the exitrd), and only it, survives with its contents, including a
// hard link to a deleted file, and what FreeInitramfs says it freed.
func TestFreeInitramfsKeeps(t *testing.T) {
	root := t.TempDir()
	stage := strings.TrimPrefix(Stage, "/")
	files := []string{"init", "lib/modules/m.ko", "etc/nbdroot.toml", stage + "/oldroot/.keep", "a/" + stage + "/x"}
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("init", filepath.Join(root, "linuxrc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "init"), filepath.Join(root, stage, "nbdroot")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got := FreeInitramfs(fd)
	var left []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if p != root {
			rel, _ := filepath.Rel(root, p)
			left = append(left, rel)
		}
		return nil
	})
	// Only the top level's name is kept: a/.exitrd goes with a.
	want := []string{stage, stage + "/nbdroot", stage + "/oldroot", stage + "/oldroot/.keep"}
	if !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if b, err := os.ReadFile(filepath.Join(root, stage, "nbdroot")); err != nil || string(b) != "init" {
		t.Errorf("the kept link reads %q, %v", b, err)
	}
	// init, the module, the spec, a/.exitrd/x and the symbolic link went;
	// the bytes are those of the files whose last link went (init's
	// stays in the stage, a symbolic link is not a file's data).
	wantFreed := Freed{Files: 5, Bytes: int64(len("lib/modules/m.ko") + len("etc/nbdroot.toml") + len("a/"+stage+"/x"))}
	if got != wantFreed {
		t.Errorf("FreeInitramfs = %+v, want %+v", got, wantFreed)
	}
}

// TestFreeInitramfsManyEntries lists a directory larger than one
// getdents(2) buffer: every entry goes.
func TestFreeInitramfsManyEntries(t *testing.T) {
	root := t.TempDir()
	const n = 600 // names of 40 bytes: well over 8 KiB of dirents
	for i := range n {
		name := filepath.Join(root, "d", strings.Repeat("x", 36)+string(rune('a'+i%26))+strings.Repeat("y", i/26))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if got := FreeInitramfs(fd); got.Files != n {
		t.Errorf("freed %d files, want %d", got.Files, n)
	}
	if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
		t.Errorf("left %d entries (%v)", len(ents), err)
	}
}
