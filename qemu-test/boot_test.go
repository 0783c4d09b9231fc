package qemutest

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// token returns a string unique to this test run, for the guest to write.
func token(t *testing.T) string {
	return t.Name() + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// bootAndWrite boots the rig against srv with the given root spec, asserts
// the root was reached as PID 1 from /dev/nbd0 with the keeper alive, and
// that the file the guest wrote is in the image afterwards.
func bootAndWrite(t *testing.T, r *rig, img string, srv *testrig.Server, spec string) console {
	t.Helper()
	tok := token(t)
	c := r.boot(t, guest{append: fmt.Sprintf("%s rw testinit.token=%s", spec, tok)})
	c.must(t,
		`nbdroot: root ready in [0-9.]+s \(modules [0-9.]+s, network [0-9.]+s, connect [0-9.]+s, attach [0-9.]+s, mount [0-9.]+s\)`,
		`TESTINIT: pid=1\n`,
		`TESTINIT: root=/dev/nbd0 fstype=ext4 opts=rw`,
		`TESTINIT: keeper=[0-9]+:@nbdroot\n`,
		`TESTINIT: write=ok`,
		`TESTINIT: done`,
	)
	c.mustNot(t, `TESTINIT: initramfs-leftover`, `Kernel panic`, `panic:`)
	srv.Stop()
	if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
		t.Fatalf("image holds %q, want %q: the guest's write was lost", got, tok)
	}
	return c
}

// TestBootQemuNBD is the mission's path: nbdroot=HOST:PORT/NAME, DHCP, the
// ioctl attach, a keeper, switch_root into the root's init.
func TestBootQemuNBD(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	c := bootAndWrite(t, r, img, srv, fmt.Sprintf("nbdroot=10.0.2.2:%d/rootfs", srv.Port))
	c.must(t, `nbdroot: network: eth0 10\.0\.2\.15/24 from DHCP server`)
}
