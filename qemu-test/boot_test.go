package qemutest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// staticIP is the kernel ip= form for QEMU's user network, no DHCP.
const staticIP = "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"

// token returns a string unique to this test run, for the guest to write.
func token(t testing.TB) string {
	return t.Name() + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// rootReached asserts that the guest's console shows the whole boot: the
// summary line, the root's init as PID 1 on /dev/nbd0, the keeper alive
// under its @ name, and the initramfs freed.
func rootReached(t *testing.T, c console, mountOpts string) {
	t.Helper()
	c.mustNot(t, `nbdroot: boot failed`)
	rootReachedAfterFailures(t, c, mountOpts)
	summaryAccounts(t, c)
}

// summaryAccounts asserts that the summary line's total is the time from
// the kernel's "Run /init" to the line itself, on the kernel log's clock:
// nothing before nbdroot's first line (the exec, the Go runtime's start)
// goes uncounted. The two clocks (printk's and CLOCK_BOOTTIME) and the
// rounding differ by a few hundredths; the exec and runtime start alone
// were 0.2-0.4 s under TCG.
func summaryAccounts(t *testing.T, c console) {
	t.Helper()
	passed, err := between(c, runInitRe, readyRe)
	if err != nil {
		t.Fatalf("%v\n--- console ---\n%s", err, c)
	}
	total, _ := strconv.ParseFloat(readyRe.FindStringSubmatch(string(c))[2], 64)
	if d := passed - total; d > 0.15 || d < -0.15 {
		t.Errorf("the summary says %.2fs, but %.3fs passed from Run /init to it on the kernel's clock: %.2fs unaccounted\n%s", total, passed, d, c.grep(`Run /init|nbdroot: (start|root ready)`))
	}
}

var readyRe = regexp.MustCompile(`\[\s*([0-9.]+)\] nbdroot: root ready in ([0-9.]+)s`)

// rootReachedAfterFailures is rootReached for a boot that may have failed
// before it succeeded (a retry from the rescue shell).
func rootReachedAfterFailures(t *testing.T, c console, mountOpts string) {
	t.Helper()
	c.must(t,
		`nbdroot: root ready in [0-9.]+s \(start [0-9.]+s, modules [0-9.]+s, network [0-9.]+s, keeper [0-9.]+s, connect [0-9.]+s, attach [0-9.]+s, mount [0-9.]+s\)`,
		`TESTINIT: pid=1\n`,
		`TESTINIT: root=\S+ fstype=\S+ opts=`+mountOpts,
		`TESTINIT: keeper=[0-9]+:@nbdroot\n`,
		`TESTINIT: keeper_root=exitrd\n`,   // it runs from /run/initramfs, never from the root
		`TESTINIT: keeper_exe=initramfs\n`, // the initramfs's own binary, not a copy on /run
		`TESTINIT: done`,
	)
	c.mustNot(t, `TESTINIT: initramfs-leftover`, `Kernel panic`, `panic:`)
	// Each line once: nbdroot does not write what the kernel echoes from
	// /dev/kmsg to the console.
	if n := strings.Count(string(c), "nbdroot: root ready in"); n != 1 {
		t.Fatalf("the summary line is on the console %d times, want once\n--- console ---\n%s", n, c)
	}
}

// bootAndWrite boots the rig with spec on the command line (plus rw), asserts
// the root was reached from /dev/nbd0, and that the file the guest wrote is in
// the image once the server has stopped.
func bootAndWrite(t *testing.T, r *rig, img string, srv *testrig.Server, spec string) console {
	t.Helper()
	tok := token(t)
	c := r.boot(t, guest{append: fmt.Sprintf("%s rw testinit.token=%s", spec, tok)})
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: root=/dev/nbd0 fstype=ext4`, `TESTINIT: write=ok`)
	srv.Stop()
	if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
		t.Fatalf("image holds %q, want %q: the guest's write was lost", got, tok)
	}
	return c
}

// TestBootQemuNBD is the mission's path: nbdroot=HOST:PORT/NAME with DHCP,
// served by qemu-nbd.
func TestBootQemuNBD(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	c := bootAndWrite(t, r, img, srv, fmt.Sprintf("nbdroot=10.0.2.2:%d/rootfs", srv.Port))
	c.must(t,
		`nbdroot: network: eth0 is ens2, as the root's udev will name it`,
		`nbdroot: network: ens2 10\.0\.2\.15/24 from DHCP server 10\.0\.2\.2`,
		`nbdroot: keeper nbd0: .* 1 connection\(s\), netlink`, // device.interface=auto
	)
}

// TestBootNbdkitDebianStatic uses Debian's HOST,PORT form (no export name),
// a static ip=, nbdkit's file plugin and the ioctl interface.
func TestBootNbdkitDebianStatic(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.Nbdkit(t, "file", img)
	c := bootAndWrite(t, r, img, srv, fmt.Sprintf("%s nbdroot=10.0.2.2,%d nbdroot.device.interface=ioctl", staticIP, srv.Port))
	c.must(t,
		`nbdroot: network: ens2 10\.0\.2\.15/24 static, via 10\.0\.2\.2`,
		`nbdroot: keeper nbd0: .* 1 connection\(s\), ioctl`,
	)
	c.mustNot(t, `DHCP`)
}

// TestBootNbdServerURI uses an NBD URI against nbd-server, with DHCP.
func TestBootNbdServerURI(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.NbdServer(t, map[string]string{"rootfs": img})
	bootAndWrite(t, r, img, srv, fmt.Sprintf("nbdroot=nbd://10.0.2.2:%d/rootfs", srv.Port))
}

// TestBootDracut uses dracut's root=nbd:SERVER:PORT:FSTYPE:ROOTFLAGS form
// with a static ip=.
func TestBootDracut(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.Nbdkit(t, "file", img)
	c := bootAndWrite(t, r, img, srv, fmt.Sprintf("%s root=nbd:10.0.2.2:%d:ext4:noatime", staticIP, srv.Port))
	c.must(t, `TESTINIT: root=/dev/nbd0 fstype=ext4 opts=rw,noatime`)
}

// TestBootReadOnly attaches a read-only export read-only and mounts it ro.
func TestBootReadOnly(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs", testrig.ReadOnly())
	c := r.boot(t, guest{append: fmt.Sprintf("nbdroot=10.0.2.2:%d/rootfs nbdroot.device.read_only=true ro testinit.mode=ro", srv.Port)})
	rootReached(t, c, "ro")
	c.must(t, `TESTINIT: write-ro=EROFS`, `READ_ONLY`)
}

// TestBootOverlay shares a read-only export among clients: a tmpfs overlay
// takes the writes, and the image stays untouched.
func TestBootOverlay(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs", testrig.ReadOnly(), testrig.Shared(4))
	c := r.boot(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs nbdroot.device.read_only=true nbdroot.root.overlay=tmpfs rw testinit.token=overlay", staticIP, srv.Port)})
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: root=overlay fstype=overlay`, `TESTINIT: write=ok`, `tmpfs overlay`)
	srv.Stop()
	if out, err := exec.Command("debugfs", "-R", "stat /nbdroot-test/written", img).CombinedOutput(); err == nil && !regexpMatch(`not found`, string(out)) {
		t.Fatalf("the overlay's write reached the read-only image:\n%s", out)
	}
}

// TestBootWrongExport: the server refuses the export; the console shows the
// server's own message and the configured failure action (poweroff) happens.
func TestBootWrongExport(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	c := r.boot(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/nosuch nbdroot.boot.on_failure=poweroff nbdroot.boot.failure_delay=0s", staticIP, srv.Port)})
	c.must(t,
		`nbdroot: boot failed: connect: .*nosuch.*NBD_REP_ERR_UNKNOWN`,
		`nbdroot: boot failed: powering off`,
		`reboot: Power down`,
	)
	c.mustNot(t, `TESTINIT:`, `Kernel panic`, `Attempted to kill init`)
}

// TestBootServerLate: the server is not listening when the guest first
// tries; it starts 3 s after the first failed attempt and the boot succeeds.
func TestBootServerLate(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	srv.Stop()
	g := r.start(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs rw testinit.token=late", staticIP, srv.Port)})
	g.waitFor(t, `nbdroot: connect: attempt 1: .*connection refused`)
	time.Sleep(3 * time.Second)
	srv.Restart()
	c := g.wait(t)
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: write=ok token=late`)
}

// TestBootMultiConn boots with four connections to nbdkit (which sets
// CAN_MULTI_CONN) on a two-CPU guest: the kernel spreads requests over the
// connections by CPU.
func TestBootMultiConn(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.Nbdkit(t, "file", img)
	tok := token(t)
	c := r.boot(t, guest{cpus: 2, append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs nbdroot.device.connections=4 rw testinit.token=%s", staticIP, srv.Port, tok)})
	rootReached(t, c, "rw")
	c.must(t, `CAN_MULTI_CONN`, `nbdroot: keeper nbd0: .* 4 connection\(s\), netlink`, `TESTINIT: write=ok`)
	srv.Stop()
	if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
		t.Fatalf("image holds %q, want %q", got, tok)
	}
}

// TestBootMultiConnRefused: a server without CAN_MULTI_CONN (qemu-nbd with
// one client) gets one connection, and the console says why.
func TestBootMultiConnRefused(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	c := r.boot(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs nbdroot.device.connections=4 ro testinit.mode=ro", staticIP, srv.Port)})
	rootReached(t, c, "ro")
	c.must(t, `one connection, not 4: the server does not allow multiple connections \(no CAN_MULTI_CONN\)`, `1 connection\(s\), netlink`)
}

// TestAttachStatusDetachInGuest runs nbdroot attach (with --swap: its
// keeper locked in memory), status and detach on the booted system against
// a second export.
func TestAttachStatusDetachInGuest(t *testing.T) {
	r := setup(t)
	img := r.rootImageWith(t, r.testinit, 64<<20, map[string]string{"usr/sbin/nbdroot": r.nbdroot})
	srv := testrig.QemuNBD(t, img, "rootfs")
	second := testrig.QemuNBD(t, testrig.RawImage(t, filepath.Join(t.TempDir(), "second.img"), 16<<20), "second")
	c := r.boot(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs ro testinit.mode=attach testinit.attach=10.0.2.2:%d/second", staticIP, srv.Port, second.Port)})
	rootReached(t, c, "ro")
	c.must(t,
		`TESTINIT: attach=/dev/nbd1 err=ok`,
		// At least the binary, locked whole (the rest is checked below).
		`TESTINIT: attach keeper Locked=([4-9]\d{3}|\d{5,})kB Rss=\d+kB`,
		`TESTINIT: status: DEVICE\s+SERVER\s+EXPORT`,
		`TESTINIT: status: /dev/nbd0\s+10\.0\.2\.2:\d+\s+rootfs\s+64 MiB\s+netlink\s+1\s+false\s+\d+\s+0\s+connected`,
		`TESTINIT: status: /dev/nbd1\s+10\.0\.2\.2:\d+\s+second\s+16 MiB\s+netlink\s+1\s+false\s+\d+\s+0\s+connected`,
		`TESTINIT: read=ok`,
		`TESTINIT: detach=ok`,
		`TESTINIT: status-after: /dev/nbd0 `,
	)
	c.mustNot(t, `TESTINIT: status-after: /dev/nbd1`)
	m := regexp.MustCompile(`TESTINIT: attach keeper Locked=(\d+)kB Rss=(\d+)kB`).FindStringSubmatch(string(c))
	if m == nil {
		return // must matched it above; this cannot happen
	}
	locked, _ := strconv.Atoi(m[1])
	rss, _ := strconv.Atoi(m[2])
	if locked < rss-64 { // all of it but the vDSO
		t.Errorf("attach --swap: the keeper has %d of its %d kB resident locked", locked, rss)
	}
	t.Logf("attach --swap: the keeper has %d of its %d kB resident locked", locked, rss)
}

// TestBootPartition mounts the root from the first partition of the export
// (root=/dev/nbd0p1): the partition table is read after the attach.
func TestBootPartition(t *testing.T) {
	r := setup(t)
	disk := testrig.PartitionedExt4(t, filepath.Join(t.TempDir(), "disk.img"), 65<<20, r.rootTree(t, r.testinit, nil))
	srv := testrig.QemuNBD(t, disk, "disk")
	tok := token(t)
	c := r.boot(t, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/disk root=/dev/nbd0p1 rw testinit.token=%s", staticIP, srv.Port, tok)})
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: root=/dev/nbd0p1 fstype=ext4`, `TESTINIT: write=ok`)
	srv.Stop()
	// e2fsck and debugfs want the filesystem on its own.
	part := filepath.Join(t.TempDir(), "part.img")
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(part, b[testrig.PartitionOffset:], 0o644); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, part, "/nbdroot-test/written"); got != tok {
		t.Fatalf("partition holds %q, want %q", got, tok)
	}
}

// TestBootKernelNames: net.ifnames=0 keeps the kernel's NIC names, as the
// root's udev will then keep them too.
func TestBootKernelNames(t *testing.T) {
	r := setup(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	c := bootAndWrite(t, r, img, srv, fmt.Sprintf("net.ifnames=0 %s nbdroot=10.0.2.2:%d/rootfs", staticIP, srv.Port))
	c.must(t, `nbdroot: network: eth0 10\.0\.2\.15/24 static`)
	c.mustNot(t, `as the root's udev will name it`)
}
