package nbddev

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeSysfs builds ROOT/block with the given files (path relative to
// ROOT/block → content) and returns ROOT.
func fakeSysfs(t *testing.T, files map[string]string) Sysfs {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		p := filepath.Join(root, "block", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Sysfs{Root: root}
}

func TestSysfsState(t *testing.T) {
	s := fakeSysfs(t, map[string]string{
		"nbd0/size": "0\n", "nbd0/pid": "41\n", // started, no capacity yet
		"nbd1/size": "131072\n", "nbd1/pid": "42\n", // live
		"nbd10/size": "0\n",                       // idle
		"nbd2/size":  "0\n",                       // idle
		"sda/size":   "100\n", "nbdx/size": "0\n", // not nbd devices
	})
	devs, err := s.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 2, 10}; !reflect.DeepEqual(devs, want) {
		t.Errorf("Devices = %v, want %v", devs, want)
	}
	for _, tc := range []struct {
		index       int
		inUse, live bool
	}{{0, true, false}, {1, true, true}, {2, false, false}, {10, false, false}, {3, false, false}} {
		if got := s.InUse(tc.index); got != tc.inUse {
			t.Errorf("InUse(%d) = %v, want %v", tc.index, got, tc.inUse)
		}
		if got := s.Live(tc.index); got != tc.live {
			t.Errorf("Live(%d) = %v, want %v", tc.index, got, tc.live)
		}
	}
	if i, err := s.FirstFree(); err != nil || i != 2 {
		t.Errorf("FirstFree = %d, %v; want 2", i, err)
	}
}

func TestSysfsFirstFreeNone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"no devices", map[string]string{"sda/size": "1"}, "no nbd devices (is the nbd module loaded?)"},
		{"all busy", map[string]string{"nbd0/pid": "1", "nbd1/pid": "2"}, "all 2 nbd devices are in use"},
	} {
		if _, err := fakeSysfs(t, tc.files).FirstFree(); err == nil || err.Error() != tc.want {
			t.Errorf("%s: FirstFree err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := (Sysfs{Root: filepath.Join(t.TempDir(), "none")}).FirstFree(); err == nil || !strings.Contains(err.Error(), "block") {
		t.Errorf("FirstFree without sysfs: err = %v, want the missing directory named", err)
	}
}

func TestSysfsDevNumbersAndQueue(t *testing.T) {
	s := fakeSysfs(t, map[string]string{
		"nbd3/dev": "43:96\n", "nbd3/nbd3p1/dev": "43:97\n", "nbd3/nbd3p2/dev": "43:98\n",
		"nbd3/queue/max_hw_sectors_kb": "65536\n", "nbd3/queue/read_ahead_kb": "128\n",
	})
	if got, want := s.DevNumbers(3), []string{"43:96", "43:97", "43:98"}; !reflect.DeepEqual(got, want) {
		t.Errorf("DevNumbers = %v, want %v", got, want)
	}
	if got := s.DevNumbers(4); len(got) != 0 {
		t.Errorf("DevNumbers of a missing device = %v, want none", got)
	}
	if v, err := s.Queue(3, "max_hw_sectors_kb"); err != nil || v != 65536 {
		t.Errorf("Queue = %d, %v; want 65536", v, err)
	}
	if err := s.SetQueue(3, "read_ahead_kb", 1024); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Queue(3, "read_ahead_kb"); err != nil || v != 1024 {
		t.Errorf("Queue after SetQueue = %d, %v; want 1024", v, err)
	}
	if got := (Sysfs{}).Dir(7); got != "/sys/block/nbd7" {
		t.Errorf("zero Sysfs Dir(7) = %q, want /sys/block/nbd7", got)
	}
}
