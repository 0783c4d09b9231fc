package qemutest

import (
	"fmt"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// sigstopBoot boots a guest whose init stops and continues every other
// process, as systemd's shutdown does, then does I/O on the root; iface is
// the device interface. It returns the console, the image and the token
// the guest wrote after the signals.
func sigstopBoot(t *testing.T, iface string) (console, string, string) {
	t.Helper()
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	tok := token(t)
	c := r.boot(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs nbdroot.device.interface=%s rw testinit.mode=sigstop testinit.token=%s",
		staticIP, srv.Port, iface, tok)})
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: sigstop stopped=ok `, `TESTINIT: sigstop terminated=ok `, `TESTINIT: sigstop continued=ok `)
	srv.Stop()
	return c, img, tok
}

// TestSigstopSigcont: with the netlink interface, a SIGSTOP/SIGCONT
// broadcast (systemd's shutdown) does not disturb the device: I/O after it
// succeeds, the data reaches the image, and the keeper is still there.
func TestSigstopSigcont(t *testing.T) {
	c, img, tok := sigstopBoot(t, "netlink")
	c.must(t, `TESTINIT: sigstop io=ok `, `TESTINIT: sigstop keeper-after=[0-9]+:@nbdroot\n`)
	c.mustNot(t, `I/O error`, `EXT4-fs error`, `NBD_DO_IT`, `connection lost`)
	if got := readBack(t, img, "/nbdroot-test/after-sigstop"); got != tok {
		t.Fatalf("image holds %q, want %q: the write after SIGSTOP/SIGCONT was lost", got, tok)
	}
}
