package sysfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadAttr(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty", "", ""},
		{"a line", "0000:00:03\n", "0000:00:03\n"},
		{"a full page", strings.Repeat("x", AttrMax), strings.Repeat("x", AttrMax)},
		{"over a page: the page", strings.Repeat("y", AttrMax+10), strings.Repeat("y", AttrMax)},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
		if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := ReadAttr(p, make([]byte, AttrMax))
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: ReadAttr = %d bytes, %v; want %d bytes", tc.name, len(got), err, len(tc.want))
		}
	}
	_, err := ReadAttr(filepath.Join(dir, "missing"), make([]byte, AttrMax))
	var pe *fs.PathError
	if !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want a *PathError for ENOENT", err)
	}
	if _, err := ReadAttr(dir, make([]byte, AttrMax)); err == nil {
		t.Errorf("a directory read as an attribute")
	}
}

// TestDirNames lists a directory larger than the buffer, twice through one
// descriptor (Names starts from the start), and a missing one.
func TestDirNames(t *testing.T) {
	dir := t.TempDir()
	var want []string
	for i := range 300 {
		name := strings.Repeat("n", 30) + string(rune('a'+i%26)) + strings.Repeat("z", i/26)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	slices.Sort(want)
	buf := make([]byte, 512) // a few entries per getdents
	got, err := DirNames(dir, buf)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("DirNames: %d names, %v; want %d", len(got), err, len(want))
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for round := range 2 {
		got, err := Names(int(f.Fd()), buf)
		if err != nil || len(got) != len(want) {
			t.Errorf("Names, round %d: %d names, %v; want %d", round, len(got), err, len(want))
		}
	}
	var pe *fs.PathError
	if _, err := DirNames(filepath.Join(dir, "missing"), buf); !errors.As(err, &pe) {
		t.Errorf("missing directory: %v, want a *PathError", err)
	}
}
