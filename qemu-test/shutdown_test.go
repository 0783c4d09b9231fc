package qemutest

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// TestExitrd is the end of a root's life as systemd ends it: testinit does
// systemd-shutdown's last steps (kill every process but the @ keeper,
// remount the root read-only, pivot into /run/initramfs with the old root at
// /oldroot) and executes /shutdown VERB. nbdroot's exitrd must unmount the
// old root, flush and disconnect the device politely (the server sees
// NBD_CMD_DISC), and then power off or reboot as asked, leaving a clean
// filesystem that needs no journal replay.
func TestExitrd(t *testing.T) {
	for _, tc := range []struct{ verb, kernelSays string }{
		{"poweroff", `reboot: Power down`},
		{"reboot", `reboot: Restarting system`},
	} {
		t.Run(tc.verb, func(t *testing.T) {
			r := setup(t)
			img := r.rootImage(t)
			srv := testrig.Nbdkit(t, "-v", "file", img)
			tok := token(t)
			c := r.boot(t, guest{append: fmt.Sprintf("nbdroot=10.0.2.2,%d %s rw testinit.mode=exitrd testinit.verb=%s testinit.token=%s", srv.Port, staticIP, tc.verb, tok)})
			c.must(t,
				`TESTINIT: keeper=[0-9]+:@nbdroot\n`,
				`TESTINIT: keeper_root=exitrd\n`,
				`TESTINIT: write=ok`,
				`TESTINIT: exitrd=exec verb=`+tc.verb,
				`nbdroot: shutdown: old root unmounted \([0-9]+ mounts\)`,
				`nbdroot: shutdown: nbd0 flushed and disconnected`,
				tc.kernelSays,
			)
			c.mustNot(t, `I/O error`, `TESTINIT: exitrd=.*failed`, `nbdroot: shutdown: .*(error|failed)`)
			srv.Stop()
			if !strings.Contains(srv.Output(), "client sent NBD_CMD_DISC") {
				t.Errorf("the server did not see NBD_CMD_DISC\n--- server ---\n%s", srv.Output())
			}
			// Unmounted cleanly: e2fsck -n finds nothing to replay or fix.
			if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
				t.Errorf("e2fsck -fn: %v\n%s", err, out)
			}
			if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
				t.Errorf("image holds %q, want %q", got, tok)
			}
		})
	}
}
