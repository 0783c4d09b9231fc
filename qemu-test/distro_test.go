package qemutest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// The distribution tests boot a stock Debian 12 root (testrig.DebianRoot)
// through nbdroot, served by nbdkit's file plugin with its log filter, and
// drive it from qemu-test/distroguest, started by a systemd service in the
// root, which reports on the console as "DISTRO: ..." lines.
const (
	// distroNIC is the name the root's udev gives QEMU's virtio NIC
	// (ID_NET_NAME_SLOT: the first device after the i440fx host bridge and
	// PIIX3 is in PCI slot 2, which QEMU's ACPI tables give as hotplug
	// slot 2), the name a stock install writes in its configuration. Today
	// nbdroot brings the NIC up as eth0 first, so the root's udev cannot
	// rename it ("Network interface 'eth0' is already up, cannot rename to
	// 'ens2'") and it keeps ens2 only as an altname, which ip(8), ifupdown
	// and systemd-networkd's Name= accept.
	distroNIC = "ens2"
	// distroStressFile is where distroguest writes its blocks.
	distroStressFile = "/var/lib/nbdroot-distro/stress.dat"
	// distroHelper and distroUnit are where the helper and its service go
	// in the root.
	distroHelper = "/usr/local/sbin/nbdroot-distro"
	distroUnit   = "nbdroot-distro.service"
	// distroImageSize is the root image's size (sparse).
	distroImageSize = 2 << 30
	// distroParallel is how many distribution guests run at once.
	distroParallel = 2
	// distroBootTimeout bounds a boot up to the helper's power-off
	// request (a systemd boot under TCG on a loaded machine).
	distroBootTimeout = 10 * time.Minute
	// distroOffLimit is the longest a power-off or reboot may take on the
	// guest clock; distroOffWait is how long the test waits for one on the
	// host, past the limit, to collect what a hung shutdown prints (the
	// kernel fails queued I/O after the keeper's 2 minute dead connection
	// timeout).
	distroOffLimit = 30 * time.Second
	distroOffWait  = 3 * time.Minute
)

// distroUnitFile is the helper's service. Type=simple lets the boot
// transaction finish; the helper waits for it itself. IgnoreOnIsolate
// keeps it running through `systemctl isolate rescue.target`.
const distroUnitFile = `[Unit]
Description=nbdroot distribution test driver
After=basic.target
IgnoreOnIsolate=yes

[Service]
Type=simple
ExecStart=` + distroHelper + `
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
`

// distroFstab is the fstab of a stock Debian install, but for the device.
const distroFstab = "# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/nbd0 / ext4 errors=remount-ro 0 1\n"

// buildDistroGuest builds the helper once per test binary.
var buildDistroGuest = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "nbdroot-distroguest-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "distroguest")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./distroguest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./distroguest: %v\n%s", err, b)
	}
	return out, nil
})

// distroCase is one boot of the Debian root.
type distroCase struct {
	name   string
	stack  testrig.NetStack
	action string // what the helper asks systemd: poweroff or reboot
	ro     bool   // Debian's default `ro` instead of `rw`
	stress bool   // write while the network service restarts
	// lifecycle, with stress, also re-executes systemd and isolates
	// rescue.target and back under the writer.
	lifecycle bool
	// soak, when set, has the helper write for that long instead, with
	// nothing restarted.
	soak time.Duration
	// lab boots the guest on a lab's network (its dnsmasq already
	// running) with nbdroot=dhcp, instead of QEMU's user network.
	lab *testrig.Lab
	// requested is distroSetup's.
	requested func()
}

// TestDistro boots the Debian root with each network stack, restarts the
// network service under a writer and powers off (and, in another boot,
// reboots); and boots it once with `ro`, where systemd checks the root and
// remounts it rw. At most distroParallel guests run at once.
func TestDistro(t *testing.T) {
	var cases []distroCase
	for _, s := range testrig.NetStacks() {
		for _, a := range []string{"poweroff", "reboot"} {
			cases = append(cases, distroCase{name: string(s) + "/" + a, stack: s, action: a, stress: true, lifecycle: a == "poweroff"})
		}
	}
	cases = append(cases, distroCase{name: "ro", stack: testrig.NetNetworkd, action: "poweroff", ro: true})
	slots := make(chan struct{}, distroParallel)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			slots <- struct{}{}
			defer func() { <-slots }()
			t0 := time.Now()
			defer func() { t.Logf("%s took %v", tc.name, time.Since(t0).Round(time.Second)) }()
			distroBoot(t, tc)
		})
	}
}

// distroBoot boots tc and asserts the whole requirement, every assertion
// on its own so that one run says which hold.
func distroBoot(t *testing.T, tc distroCase) {
	r := setup(t)
	release := strings.TrimPrefix(filepath.Base(r.kernel), "vmlinuz-")
	img := distroImage(t, testrig.DebianRoot(t, release), tc.stack, distroNIC)
	tok := token(t)
	mode := "rw"
	if tc.ro {
		mode = "ro"
	}
	writer := ""
	switch {
	case tc.stress:
		writer = " distro.restart=" + tc.stack.Service()
		if tc.lifecycle {
			writer += " distro.lifecycle=1"
		}
	case tc.soak > 0:
		writer = fmt.Sprintf(" distro.soak=%d distro.stress_interval_ms=%d", int(tc.soak.Seconds()), soakIntervalMs)
	case tc.ro:
		// The quiet boot reports the keeper's memory at 60 s of uptime,
		// where the issue measures it.
		writer = " distro.keeper_at=60"
	}
	run := r.distroRun(t, img, distroSetup{lab: tc.lab, soak: tc.soak, requested: tc.requested}, func(port int) string {
		root := fmt.Sprintf("nbdroot=10.0.2.2:%d/rootfs", port)
		if tc.lab != nil {
			root = "nbdroot=dhcp" // the lab's DHCP root-path
		}
		return fmt.Sprintf("%s ip=dhcp %s distro.action=%s%s distro.token=%s distro.stress_file=%s",
			root, mode, tc.action, writer, tok, distroStressFile)
	})
	c, requested, exited, qerr, srv, logFile := run.c, run.requested, run.exited, run.qerr, run.srv, run.logFile
	d := distroReport{t: t, c: c}

	// The boot.
	if !requested {
		d.fail("the helper never asked to %s within %v", tc.action, distroBootTimeout)
	}
	d.want("systemd reached running", `DISTRO: state=running `, `DISTRO: state=`)
	d.want("no failed unit", `DISTRO: failed=0\n`, `DISTRO: (failed|journal)`)
	if tc.stress || tc.soak > 0 {
		if tc.stress {
			d.want("the network service restarted", `DISTRO: restart unit=`+regexp.QuoteMeta(tc.stack.Service())+` rc=0 `, `DISTRO: restart `)
		}
		if tc.lifecycle {
			d.lifecycle()
		}
		run, ok := d.stress()
		if ok && (run.errs != 0 || run.verify != "ok") {
			d.fail("the writer: errors=%d verify=%s, want errors=0 verify=ok", run.errs, run.verify)
		}
		defer func() {
			// Last: it stops the test at its first bad block.
			if ok && run.blocks > 0 {
				checkStressImage(t, readBack(t, img, distroStressFile), tok, run)
			}
		}()
	}
	if tc.ro {
		d.want("systemd-fsck-root checked the root", `DISTRO: fsck-root .*(clean|/dev/nbd0)`, `DISTRO: (fsck-root|unit systemd-fsck-root)`)
		d.want("systemd-fsck-root succeeded", `DISTRO: unit systemd-fsck-root\.service .*Result=success.*ConditionResult=yes`, `DISTRO: unit systemd-fsck-root`)
		d.want("systemd-remount-fs succeeded", `DISTRO: unit systemd-remount-fs\.service .*Result=success.*ConditionResult=yes`, `DISTRO: unit systemd-remount-fs`)
		d.want("the root is rw", `DISTRO: root dev=\S+ opts=rw`, `DISTRO: root `)
	}

	// The kernel's view.
	d.wantNot("no I/O error", `I/O error`, `I/O error|JBD2|EXT4-fs|nbd0|block nbd`)
	d.wantNot("no ext4 error", `EXT4-fs error|EXT4-fs \(nbd0\): Remounting filesystem read-only`, `EXT4-fs`)
	// The guest reports the root keeper just before the shutdown request;
	// no line means no keeper, which fails here rather than skipping the
	// checks on it.
	d.want("the root keeper is alive before the shutdown", `DISTRO: keeper pid=\d+ `, `DISTRO: (keeper|request)`)
	t.Logf("%s", c.grep(`DISTRO: keeper pid=.*`))
	// The keeper starts with transparent huge pages off
	// (keeper.withoutTHP): a 2 MiB page would hold a few KiB.
	d.want("the keeper holds no transparent huge page", `DISTRO: keeper pid=.* rollup.AnonHugePages=0kB`, `DISTRO: keeper pid=`)
	d.want("every keeper thread is an I/O flusher", `DISTRO: keeper pid=.* unflushed=0 `, `DISTRO: keeper pid=`)
	// Its starter turns Go's memory profiler off (keeper.keeperGODEBUG).
	d.want("the keeper runs without the memory profiler", `DISTRO: keeper pid=.* godebug=(\S+,)?memprofilerate=0 `, `DISTRO: keeper pid=`)
	// systemd's shutdown warns about an @ process running from the root
	// file system: the keeper runs from the initrd (/run/initramfs).
	d.wantNot("the keeper runs from the initrd", `has been marked to be excluded from killing`, `excluded from killing`)
	// PID 1 leaves the initramfs to the keeper, which frees it once the
	// root's init runs (keeper.StartOptions.Switched).
	d.want("the keeper freed the initramfs", `nbdroot: keeper nbd0: freed the initramfs once the root's init ran: [1-9]\d* files, [1-9][0-9.]* MiB`, `initramfs`)

	// The shutdown.
	final := map[string]string{"poweroff": "reboot: Power down", "reboot": "reboot: Restarting system"}[tc.action]
	if requested {
		if !exited {
			d.fail("QEMU did not exit within %v of the request (%v)", distroOffWait, qerr)
		}
		d.want("the kernel's final line", regexp.QuoteMeta(final), `reboot:|nbdroot|Failed|[Ss]topp|I/O error`)
		if took, ok := offTime(c, final); !ok {
			d.fail("no printk-stamped request and %q on the console: cannot time the %s; the lines:\n%s", final, tc.action, c.grep(`nbdroot-distro|request=|reboot:|Power down|Restarting`))
		} else if took > distroOffLimit {
			d.fail("%s took %v on the guest clock, want at most %v", tc.action, took, distroOffLimit)
		} else {
			t.Logf("%s took %v on the guest clock", tc.action, took)
		}
	}

	// The server's view: a polite disconnect. The log filter writes
	// "Disconnect" for every closed connection, polite or not; nbdkit -v
	// says when the client sent NBD_CMD_DISC.
	sout := srv.Output()
	if !strings.Contains(sout, "client sent NBD_CMD_DISC") {
		var why []string
		for _, l := range strings.Split(sout, "\n") {
			if strings.Contains(l, "closing connection") || strings.Contains(l, "NBD_CMD_DISC") {
				why = append(why, l)
			}
		}
		d.fail("nbdkit saw no NBD_CMD_DISC (%d bytes of output); it says:\n%s", len(sout), strings.Join(why, "\n"))
	}
	if lb, err := os.ReadFile(logFile); err != nil {
		d.fail("nbdkit's log: %v", err)
	} else {
		var conns []string
		for _, l := range strings.Split(string(lb), "\n") {
			if strings.Contains(l, " Connect ") || strings.Contains(l, " Disconnect ") {
				conns = append(conns, l)
			}
		}
		t.Logf("nbdkit log filter (%d bytes), connections:\n%s", len(lb), strings.Join(conns, "\n"))
	}

	// The image.
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		d.fail("e2fsck -fn: %v\n%s", err, out)
	}
}

// distroImage makes the root image of one boot from the Debian tree at
// tree: the network stack set up for the NIC named nic, the helper and its
// service, and a stock fstab.
func distroImage(t testing.TB, tree string, stack testrig.NetStack, nic string) string {
	t.Helper()
	testrig.Need(t, "nbdkit", "systemctl")
	helper, err := buildDistroGuest()
	if err != nil {
		t.Fatal(err)
	}
	dir := testrig.DebianCopy(t, tree)
	stack.Configure(t, dir, nic)
	hb, err := os.ReadFile(helper)
	if err != nil {
		t.Fatal(err)
	}
	testrig.ReplaceFile(t, dir, distroHelper, hb, 0o755)
	testrig.ReplaceFile(t, dir, "etc/systemd/system/"+distroUnit, []byte(distroUnitFile), 0o644)
	testrig.ReplaceFile(t, dir, "etc/fstab", []byte(distroFstab), 0o644)
	testrig.Systemctl(t, dir, "enable", distroUnit)
	t1 := time.Now()
	img := testrig.Ext4FromDir(t, filepath.Join(t.TempDir(), "root.img"), distroImageSize, dir)
	t.Logf("root image made in %v", time.Since(t1).Round(100*time.Millisecond))
	return img
}

// distroGuest is what one boot of a Debian root left.
type distroGuest struct {
	c         console
	requested bool  // the helper asked for the power-off or reboot
	exited    bool  // and QEMU exited within distroOffWait
	qerr      error // QEMU's exit error, or why it did not exit
	srv       *testrig.Server
	logFile   string // nbdkit's log filter's file
}

// distroSetup is how distroRun boots a Debian root.
type distroSetup struct {
	initramfs string        // default: the rig's
	lab       *testrig.Lab  // the lab network (nbdkit in it, guest MAC 0), or QEMU's user network
	soak      time.Duration // how much longer than a boot the helper's request may take
	// requested, if set, is called when the helper asks for the
	// power-off or reboot, before the shutdown begins.
	requested func()
}

// distroRun serves img with nbdkit (file plugin, log filter, -v), boots it
// as o says with the kernel arguments args(port), waits for the helper's
// request and then for QEMU to exit, and stops the server.
func (r *rig) distroRun(t testing.TB, img string, o distroSetup, args func(port int) string) distroGuest {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "nbdkit.log")
	nbdkitArgs := []string{"-v", "--filter=log", "file", img, "logfile=" + logFile}
	var srv *testrig.Server
	g := guest{initramfs: o.initramfs, cpus: 2, memMiB: 1024, timeout: distroBootTimeout + o.soak + distroOffWait}
	if o.lab != nil {
		srv = o.lab.Nbdkit(t, nbdkitArgs...)
		g.lab, g.mac = o.lab, testrig.MAC(0)
	} else {
		srv = testrig.Nbdkit(t, nbdkitArgs...)
	}
	g.append = "printk.time=1 " + args(srv.Port)
	guest := r.start(t, g)
	// Up to the request, then the shutdown, each with its own limit.
	run := distroGuest{srv: srv, logFile: logFile}
	run.requested = waitConsole(guest, `DISTRO: request=`, distroBootTimeout+o.soak)
	if run.requested && o.requested != nil {
		o.requested()
	}
	if run.requested {
		run.qerr = guest.p.Wait(distroOffWait)
		run.exited = run.qerr == nil
	}
	guest.p.Stop()
	run.c = guest.console()
	srv.Stop()
	if os.Getenv("NBDROOT_TEST_CONSOLE") != "" {
		t.Logf("--- console ---\n%s", run.c)
	}
	return run
}

// distroReport collects the failures of one boot, each with the console
// lines that explain it.
type distroReport struct {
	t *testing.T
	c console
}

// fail reports a failed assertion.
func (d distroReport) fail(format string, a ...any) {
	d.t.Helper()
	d.t.Errorf("FAIL: "+format, a...)
}

// want asserts that pattern matches the console; on failure it shows the
// lines matching context.
func (d distroReport) want(what, pattern, context string) {
	d.t.Helper()
	if regexp.MustCompile(pattern).MatchString(string(d.c)) {
		d.t.Logf("ok: %s", what)
		return
	}
	d.t.Errorf("FAIL: %s: the console does not match %q; relevant lines:\n%s", what, pattern, d.c.grep(context))
}

// wantNot asserts that pattern matches nowhere on the console.
func (d distroReport) wantNot(what, pattern, context string) {
	d.t.Helper()
	if !regexp.MustCompile(pattern).MatchString(string(d.c)) {
		d.t.Logf("ok: %s", what)
		return
	}
	d.t.Errorf("FAIL: %s: the console matches %q; relevant lines:\n%s", what, pattern, d.c.grep(context))
}

// lifecycle asserts that the keeper survived `systemctl daemon-reexec`,
// `systemctl isolate rescue.target` and the way back (the same pid after
// each), that the root link kept its address in rescue.target, where the
// root's network stack is stopped, and that systemd was running again.
func (d distroReport) lifecycle() {
	d.t.Helper()
	ms := distroLifecycle.FindAllStringSubmatch(string(d.c), -1)
	pids := map[string]bool{}
	var steps []string
	for _, m := range ms {
		steps = append(steps, m[1])
		pids[m[3]] = true
		if m[2] != "0" {
			d.fail("systemctl %s exited %s; its line:\n%s", m[1], m[2], m[0])
		}
	}
	if strings.Join(steps, ",") != "daemon-reexec,isolate-rescue,isolate-default" {
		d.fail("the lifecycle steps were %q, want daemon-reexec, isolate-rescue, isolate-default; the lines:\n%s", steps, d.c.grep(`DISTRO: lifecycle`))
		return
	}
	first := regexp.MustCompile(`DISTRO: keeper pid=(\d+)`).FindStringSubmatch(string(d.c))
	if len(pids) != 1 || pids["none"] || first == nil || !pids[first[1]] {
		d.fail("the keeper did not survive the lifecycle as one process (pids %v, at the end %v); the lines:\n%s", pids, first, d.c.grep(`DISTRO: (lifecycle|keeper)`))
	} else {
		d.t.Logf("ok: the keeper (pid %s) survived daemon-reexec, rescue.target and back", first[1])
	}
	d.want("the root link kept its address in rescue.target", `DISTRO: lifecycle rescue addr \d+: \S+\s+inet 10\.0\.2\.15/24`, `DISTRO: lifecycle`)
	d.want("systemd running again after rescue.target", `DISTRO: lifecycle isolate-default rc=0 keeper=\d+ state=running `, `DISTRO: (lifecycle|failed)`)
}

// distroLifecycle is one lifecycle step's line: step, rc, keeper pid.
var distroLifecycle = regexp.MustCompile(`DISTRO: lifecycle (\S+) rc=(-?\d+) keeper=(\S+) `)

// stress reads the writer's result.
func (d distroReport) stress() (stressRun, bool) {
	d.t.Helper()
	m := distroStressResult.FindStringSubmatch(string(d.c))
	if m == nil {
		d.fail("no writer result on the console; its lines:\n%s", d.c.grep(`DISTRO: (stress|restart)`))
		return stressRun{}, false
	}
	run := stressRun{c: d.c, verify: m[3], failed: map[int]bool{}}
	run.blocks, _ = strconv.Atoi(m[1])
	run.errs, _ = strconv.Atoi(m[2])
	f := distroStressFailed.FindStringSubmatch(string(d.c))
	if f == nil {
		d.fail("the writer did not list its failed blocks; its lines:\n%s", d.c.grep(`DISTRO: stress`))
		return run, false
	}
	for _, r := range strings.Split(f[1], ",") {
		if r == "none" {
			break
		}
		a, b, _ := strings.Cut(r, "-")
		lo, err1 := strconv.Atoi(a)
		hi, err2 := strconv.Atoi(b)
		if b == "" {
			hi, err2 = lo, nil
		}
		if err1 != nil || err2 != nil || hi < lo {
			d.fail("the writer's failed blocks %q do not parse", f[1])
			return run, false
		}
		for i := lo; i <= hi; i++ {
			run.failed[i] = true
		}
	}
	d.t.Logf("writer: blocks=%d errors=%d verify=%s", run.blocks, run.errs, run.verify)
	if len(run.failed) != run.errs {
		d.fail("the writer counted %d errors but named %d blocks", run.errs, len(run.failed))
		return run, false
	}
	return run, true
}

var (
	distroStressResult = regexp.MustCompile(`DISTRO: stress blocks=(\d+) errors=(\d+) verify=(ok|FAIL\(.*?\))`)
	distroStressFailed = regexp.MustCompile(`DISTRO: stress failed=(none|[0-9,-]+)\n`)
	printkStamp        = regexp.MustCompile(`\[\s*(\d+\.\d+)\] ([^\r\n[]*)`)
)

// grep returns the console's lines matching pattern, at most the last 150.
func (c console) grep(pattern string) string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, l := range strings.Split(string(c), "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	if len(out) > 150 {
		out = append([]string{fmt.Sprintf("(%d earlier lines left out)", len(out)-150)}, out[len(out)-150:]...)
	}
	return strings.Join(out, "\n")
}

// offTime is the time on the guest's printk clock from the helper's
// request to the kernel's final line. A printk line need not start a
// console line: the kernel writes its messages to the serial port while
// the tty drains userspace's output (the helper's own DISTRO line, written
// right after its /dev/kmsg line, or systemd's status lines), so a message
// can land in the middle of another line; it is never split itself.
func offTime(c console, final string) (time.Duration, bool) {
	var req, end float64
	var haveReq, haveEnd bool
	for _, m := range printkStamp.FindAllStringSubmatch(string(c), -1) {
		ts, _ := strconv.ParseFloat(m[1], 64)
		switch {
		case strings.HasPrefix(m[2], "nbdroot-distro: request="):
			req, haveReq = ts, true
		case strings.HasPrefix(m[2], final):
			end, haveEnd = ts, true
		}
	}
	if !haveReq || !haveEnd {
		return 0, false
	}
	return time.Duration((end - req) * float64(time.Second)), true
}

// waitConsole waits until pattern matches the console, the guest exits or
// timeout passes, and reports whether it matched.
func waitConsole(g *running, pattern string, timeout time.Duration) bool {
	re := regexp.MustCompile(pattern)
	for t0 := time.Now(); time.Since(t0) < timeout; time.Sleep(200 * time.Millisecond) {
		if re.MatchString(string(g.console())) {
			return true
		}
		if done, _ := g.p.Exited(); done {
			return re.MatchString(string(g.console()))
		}
	}
	return false
}

// TestOffTime times power-offs from consoles where the kernel's lines land
// in the middle of userspace's, as a loaded guest's serial console has them.
func TestOffTime(t *testing.T) {
	for _, tc := range []struct {
		name, console string
		want          time.Duration
		ok            bool
	}{
		{"clean", "[   10.500000] nbdroot-distro: request=poweroff\nDISTRO: request=poweroff t=10.49\n[  OK  ] Stopped x.\n[   13.000000] reboot: Power down\n", 2500 * time.Millisecond, true},
		{"interleaved", "DISTRO: req[   10.500000] nbdroot-distro: request=poweroff\nuest=poweroff t=10.49\n[  OK  ] Stopp[   13.250000] reboot: Power down\r\ned x.\n", 2750 * time.Millisecond, true},
		{"two stamps on a line", "[    9.000000] other [   10.000000] nbdroot-distro: request=poweroff\n[   11.000000] reboot: Power down\n", time.Second, true},
		{"no request", "DISTRO: request=poweroff t=10.49\n[   13.000000] reboot: Power down\n", 0, false},
		{"no final line", "[   10.500000] nbdroot-distro: request=poweroff\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := offTime(console(tc.console), "reboot: Power down")
			if ok != tc.ok || (ok && (got-tc.want).Abs() > time.Microsecond) {
				t.Errorf("offTime = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
