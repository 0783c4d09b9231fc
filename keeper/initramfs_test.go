package keeper

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/shutdown"
)

// TestFreeLater checks that the keeper frees the initramfs only when the
// switch pipe ends (PID 1's exec of the root's init closes its end), keeps
// the stage, and says what it freed.
func TestFreeLater(t *testing.T) {
	root := t.TempDir()
	stage := strings.TrimPrefix(shutdown.Stage, "/")
	for _, f := range []string{"lib/modules/m.ko", stage + "/nbdroot"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 3<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var out testrig.SyncBuffer
	k := &keeper{log: bootlog.New(&out, time.Now()), step: "keeper nbd0"}
	k.freeLater(&initramfsAfterSwitch{root: fd, switched: r})

	time.Sleep(100 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(root, "lib/modules/m.ko")); err != nil {
		t.Fatalf("freed while the switch pipe was open: %v", err)
	}
	w.Close()
	const want = "keeper nbd0: freed the initramfs once the root's init ran: 1 files, 3.0 MiB"
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within 10 s; the log:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(root, "lib")); !os.IsNotExist(err) {
		t.Errorf("lib survived: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, stage, "nbdroot")); err != nil {
		t.Errorf("the stage went: %v", err)
	}
}
