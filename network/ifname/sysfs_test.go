package ifname

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
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
		{"a full page", strings.Repeat("x", attrMax), strings.Repeat("x", attrMax)},
		{"over a page: the page", strings.Repeat("y", attrMax+10), strings.Repeat("y", attrMax)},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
		if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := readAttr(p)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: readAttr = %d bytes, %v; want %d bytes", tc.name, len(got), err, len(tc.want))
		}
	}
	_, err := readAttr(filepath.Join(dir, "missing"))
	var pe *fs.PathError
	if !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want a *PathError for ENOENT", err)
	}
	if _, err := readAttr(dir); err == nil {
		t.Errorf("a directory read as an attribute")
	}
}
