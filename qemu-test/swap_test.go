package qemutest

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// swapRe is testinit's report of the root keeper's memory after the hog.
var swapRe = regexp.MustCompile(`TESTINIT: swap keeper Swap=(\d+)kB Locked=(\d+)kB Rss=(\d+)kB`)

// TestSwapOnRoot puts a swap file on the NBD root and a memory hog on a
// small guest, so that the kernel swaps out whatever it can to the very
// device the keeper serves; a keeper swapped out there would wait on
// itself at its next reconnect. With device.swap (nbd-client's -swap) the
// keeper must stay wholly in memory; without it, the same boot must show
// the keeper swapped out, or the test proves nothing. Both boots then
// swapoff, write and read back through the device, and the write must be
// in the image.
func TestSwapOnRoot(t *testing.T) {
	r := setup(t)
	for _, tc := range []struct {
		name   string
		locked bool
	}{{"locked", true}, {"unlocked", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img := r.rootImageWith(t, r.testinit, 256<<20, nil)
			srv := testrig.QemuNBD(t, img, "rootfs")
			tok := token(t)
			spec := fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs rw testinit.mode=swap testinit.swap_mib=128 testinit.hog_mib=192 testinit.token=%s", staticIP, srv.Port, tok)
			if tc.locked {
				spec += " nbdroot.device.swap=true"
			}
			c := r.boot(t, guest{memMiB: 256, append: spec})
			rootReached(t, c, "rw")
			c.must(t, `TESTINIT: swap on=ok mib=128`, `TESTINIT: swap hog exit=ok`, `TESTINIT: swap off=ok io=ok`)
			c.mustNot(t, `I/O error`, `Out of memory`)
			m := regexp.MustCompile(`TESTINIT: swap hog swapped_kb=(\d+)`).FindStringSubmatch(string(c))
			if m == nil {
				t.Fatalf("no report from the hog\n%s", c)
			}
			if kb, _ := strconv.Atoi(m[1]); kb < 16<<10 {
				t.Fatalf("the hog pushed only %d kB into swap: no pressure, no test\n%s", kb, c.grep(`TESTINIT: swap`))
			}
			k := swapRe.FindStringSubmatch(string(c))
			if k == nil {
				t.Fatalf("no report of the keeper's memory\n%s", c.grep(`TESTINIT: swap`))
			}
			swapped, _ := strconv.Atoi(k[1])
			locked, _ := strconv.Atoi(k[2])
			rss, _ := strconv.Atoi(k[3])
			t.Logf("hog swapped %s kB; keeper swapped %d kB, locked %d of %d kB resident", m[1], swapped, locked, rss)
			if tc.locked {
				c.must(t, `nbdroot: keeper nbd0: device.swap: locked in memory \(the binary's \d+ KiB resident\)`)
				// What mlock never locks: the vDSO and vvar.
				if swapped != 0 || locked < rss-64 {
					t.Errorf("with device.swap the keeper has %d kB in swap and %d of %d kB resident locked; want none in swap, all locked", swapped, locked, rss)
				}
			} else if swapped == 0 {
				t.Errorf("without device.swap the keeper was not swapped out either: this pressure does not tell a locked keeper from another")
			}
			srv.Stop()
			if got := readBack(t, img, "/nbdroot-test/after-swap"); got != tok {
				t.Fatalf("image holds %q, want %q: the write after swapoff was lost", got, tok)
			}
		})
	}
}
