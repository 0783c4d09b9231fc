// Command distroguest drives a Debian root booted by the QEMU distribution
// tests (qemu-test/distro_test.go). A systemd service in the root starts it
// once the boot transaction is queued; it reports on the console as
// "DISTRO: key=value" lines the tests assert on:
//
//	DISTRO: started t=UPTIME
//	DISTRO: state=STATE t=UPTIME          systemctl is-system-running --wait
//	DISTRO: failed-unit=UNIT              one line per failed unit, then
//	DISTRO: journal UNIT: LINE            the end of its journal
//	DISTRO: failed=N
//	DISTRO: link LINE / addr LINE / netname NIC KEY=VALUE / udev LINE
//	DISTRO: root opts=OPTIONS             / as mounted now
//	DISTRO: unit UNIT PROP=VALUE ...      systemd-fsck-root, systemd-remount-fs
//	DISTRO: fsck-root LINE                the journal of systemd-fsck-root
//	DISTRO: stress started t=UPTIME
//	DISTRO: restart unit=UNIT rc=RC t=UPTIME seconds=D
//	DISTRO: lifecycle STEP rc=RC keeper=PID state=STATE t=UPTIME
//	DISTRO: lifecycle rescue addr LINE    the root link's addresses in rescue.target
//	DISTRO: stress error index=I op=write|fsync err=ERR t=UPTIME  (the first 10)
//	DISTRO: stress failed=none|A-B,C,...  every failed block
//	DISTRO: stress blocks=N errors=E verify=ok|FAIL(...)
//	DISTRO: keeper pid=PID MEMORY... t=UPTIME  the root keeper's memory, then
//	DISTRO: keeper map ... / keeper pages ...  its largest mappings, its binary's mapped pages
//	DISTRO: request=ACTION t=UPTIME
//
// Meanwhile a writer writes and fsyncs stressblock blocks to the file
// distro.stress_file from before the restart of distro.restart until
// distro.after_seconds after it. With distro.soak=SECONDS instead, the
// writer runs that long and nothing is restarted. distro.stress_interval_ms
// paces the writer (default: no pause). With distro.lifecycle=1, after the
// restart and still under the writer, the helper puts systemd through
// `systemctl daemon-reexec`, `systemctl isolate rescue.target` and
// `systemctl isolate default.target`, reporting the keeper's pid after each
// step (its service has IgnoreOnIsolate=yes, so that it survives the
// isolation). The request is also written to /dev/kmsg
// ("nbdroot-distro: request=ACTION") so that its printk timestamp can be
// compared with the kernel's final "reboot:" line, and then the helper runs
// `systemctl ACTION` (poweroff or reboot, distro.action). With
// distro.keeper_at=SECONDS the keeper's report waits until the system has
// been up that long (the issue measures the keeper's memory at 60 s).
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/qemu-test/stressblock"
)

// out is the console, where every report line goes.
type out struct{ f *os.File }

func (o out) say(format string, a ...any) {
	fmt.Fprintf(o.f, "DISTRO: "+format+"\n", a...)
}

func main() {
	con, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		con = os.Stdout
	}
	o := out{con}
	args := cmdline()
	o.say("started t=%.3f", uptime())

	state, _ := run("systemctl", "is-system-running", "--wait")
	o.say("state=%s t=%.3f", strings.TrimSpace(state), uptime())
	o.failedUnits()
	o.network()
	o.rootState()

	action := args["distro.action"]
	if unit := args["distro.restart"]; unit != "" {
		during := func() { o.restart(unit) }
		if args["distro.lifecycle"] == "1" {
			during = func() { o.restart(unit); o.lifecycle() }
		}
		o.stress(args, during, time.Duration(intArg(args, "distro.before_seconds", 3))*time.Second,
			time.Duration(intArg(args, "distro.after_seconds", 8))*time.Second)
		o.network()
	} else if soak := intArg(args, "distro.soak", 0); soak > 0 {
		o.stress(args, nil, 0, time.Duration(soak)*time.Second)
		o.network()
	}
	if action == "" {
		action = "poweroff"
	}
	if wait := float64(intArg(args, "distro.keeper_at", 0)) - uptime(); wait > 0 {
		time.Sleep(time.Duration(wait * float64(time.Second)))
	}
	o.keeper()
	// The kernel log line gives the request a printk timestamp on the
	// same clock as the kernel's last line.
	if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		fmt.Fprintf(k, "<5>nbdroot-distro: request=%s\n", action)
		k.Close()
	}
	o.say("request=%s t=%.3f", action, uptime())
	if s, err := run("systemctl", action); err != nil {
		o.say("systemctl %s failed: %v %s", action, err, s)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// keeper reports the root keeper's memory (VmRSS and its parts) and its
// root directory.
func (o out) keeper() {
	if pid := keeperPid(); pid != "none" {
		st, _ := os.ReadFile("/proc/" + pid + "/status")
		var mem []string
		for _, l := range lines(string(st)) {
			if k, v, ok := strings.Cut(l, ":"); ok && (strings.HasPrefix(k, "Rss") || k == "VmRSS" || k == "Threads") {
				mem = append(mem, k+"="+strings.Join(strings.Fields(v), ""))
			}
		}
		// smaps_rollup is exact where status's counters lag (the kernel
		// syncs them every 64 faults per thread).
		rollup, _ := os.ReadFile("/proc/" + pid + "/smaps_rollup")
		for _, l := range lines(string(rollup)) {
			if k, v, ok := strings.Cut(l, ":"); ok && (k == "Rss" || k == "Anonymous" || k == "AnonHugePages") {
				mem = append(mem, "rollup."+k+"="+strings.Join(strings.Fields(v), ""))
			}
		}
		root, _ := os.Readlink("/proc/" + pid + "/root")
		godebug := "none"
		env, _ := os.ReadFile("/proc/" + pid + "/environ")
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				godebug = v
			}
		}
		o.say("keeper pid=%s %s waits=%s unflushed=%d godebug=%s root=%s t=%.3f", pid, strings.Join(mem, " "), threadWaits(pid), unflushed(pid), godebug, root, uptime())
		o.smaps(pid)
		o.pagemap(pid)
	}
}

// pagemap reports which pages of the keeper's executable are mapped, as
// runs of file page numbers (hexadecimal), to tell which parts of the
// binary (text, rodata, pclntab, data) the keeper holds:
//
//	DISTRO: keeper pages FIRST+COUNT ...
func (o out) pagemap(pid string) {
	maps, err := os.ReadFile("/proc/" + pid + "/maps")
	if err != nil {
		return
	}
	pm, err := os.Open("/proc/" + pid + "/pagemap")
	if err != nil {
		return
	}
	defer pm.Close()
	var inode string
	var runs []string
	first, count := int64(-1), int64(0)
	flush := func() {
		if count > 0 {
			runs = append(runs, fmt.Sprintf("%x+%d", first, count))
		}
		first, count = -1, 0
	}
	for _, l := range lines(string(maps)) {
		f := strings.Fields(l)
		if len(f) < 6 || f[4] == "0" || (inode != "" && f[4] != inode) {
			continue
		}
		inode = f[4]
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		off, _ := strconv.ParseUint(f[2], 16, 64)
		n := (end - start) / 4096
		buf := make([]byte, 8*n)
		if _, err := pm.ReadAt(buf, int64(start/4096*8)); err != nil {
			continue
		}
		for i := uint64(0); i < n; i++ {
			present := buf[8*i+7]&0x80 != 0
			page := int64(off/4096 + i)
			switch {
			case present && count > 0 && first+count == page:
				count++
			case present:
				flush()
				first, count = page, 1
			}
		}
	}
	flush()
	for len(runs) > 0 {
		k := min(len(runs), 24)
		o.say("keeper pages %s", strings.Join(runs[:k], " "))
		runs = runs[k:]
	}
}

// threadWaits is where each of pid's threads sleeps in the kernel (its
// wchan), counted, such as "futex_wait_queue:5,do_epoll_wait:1": what holds
// each of the keeper's threads.
func threadWaits(pid string) string {
	tasks, _ := os.ReadDir("/proc/" + pid + "/task")
	n := map[string]int{}
	for _, t := range tasks {
		w, _ := os.ReadFile("/proc/" + pid + "/task/" + t.Name() + "/wchan")
		n[string(w)]++
	}
	var s []string
	for w, c := range n {
		s = append(s, fmt.Sprintf("%s:%d", w, c))
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}

// unflushed counts pid's threads without the task flags of
// PR_SET_IO_FLUSHER (PF_MEMALLOC_NOIO and PF_LOCAL_THROTTLE, from
// include/linux/sched.h): the prctl marks a thread, not a process, and a
// keeper thread without them may wait on the writeback it carries.
func unflushed(pid string) int {
	const flusher = 0x00080000 | 0x00100000
	tasks, _ := os.ReadDir("/proc/" + pid + "/task")
	n := 0
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + pid + "/task/" + t.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command's ")": state, ppid, pgrp, session,
		// tty_nr, tpgid, flags.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if flags, err := strconv.ParseUint(f[6], 10, 64); err != nil || flags&flusher != flusher {
			n++
		}
	}
	return n
}

// smaps reports the keeper's largest mappings by resident size, to tell
// its heap from its binary's pages from the rest:
//
//	DISTRO: keeper map START-END PERMS NAME rss=KB anon=KB thp=KB
func (o out) smaps(pid string) {
	b, err := os.ReadFile("/proc/" + pid + "/smaps")
	if err != nil {
		return
	}
	type mapping struct {
		head           string
		rss, anon, thp int
	}
	var maps []mapping
	for _, l := range lines(string(b)) {
		f := strings.Fields(l)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			name := "[anon]"
			if len(f) >= 6 {
				name = f[5]
			}
			maps = append(maps, mapping{head: f[0] + " " + f[1] + " " + name})
		case len(maps) > 0 && len(f) >= 2 && f[0] == "Rss:":
			maps[len(maps)-1].rss, _ = strconv.Atoi(f[1])
		case len(maps) > 0 && len(f) >= 2 && f[0] == "Anonymous:":
			maps[len(maps)-1].anon, _ = strconv.Atoi(f[1])
		case len(maps) > 0 && len(f) >= 2 && f[0] == "AnonHugePages:":
			maps[len(maps)-1].thp, _ = strconv.Atoi(f[1])
		}
	}
	slices.SortFunc(maps, func(a, b mapping) int { return b.rss - a.rss })
	for _, m := range maps[:min(len(maps), 8)] {
		o.say("keeper map %s rss=%d anon=%d thp=%d", m.head, m.rss, m.anon, m.thp)
	}
}

// failedUnits reports every failed unit and the end of its journal.
func (o out) failedUnits() {
	s, _ := run("systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager")
	n := 0
	for _, line := range lines(s) {
		unit := strings.Fields(line)[0]
		n++
		o.say("failed-unit=%s", unit)
		j, _ := run("journalctl", "-b", "--no-pager", "-o", "cat", "-n", "15", "-u", unit)
		for _, l := range lines(j) {
			o.say("journal %s: %s", unit, l)
		}
	}
	o.say("failed=%d", n)
}

// network reports the links, their addresses, the names udev would give
// the NICs, and what udev logged about renaming them.
func (o out) network() {
	s, _ := run("ip", "-o", "link", "show")
	for _, l := range lines(s) {
		o.say("link %s", l)
	}
	s, _ = run("ip", "-o", "addr", "show")
	for _, l := range lines(s) {
		o.say("addr %s", l)
	}
	nics, _ := filepath.Glob("/sys/class/net/*/device")
	for _, d := range nics {
		nic := filepath.Base(filepath.Dir(d))
		s, _ := run("udevadm", "info", "-q", "property", "-p", "/sys/class/net/"+nic)
		for _, l := range lines(s) {
			if strings.HasPrefix(l, "ID_NET_NAME") || strings.HasPrefix(l, "INTERFACE") {
				o.say("netname %s %s", nic, l)
			}
		}
	}
	s, _ = run("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "systemd-udevd")
	for _, l := range lines(s) {
		if strings.Contains(strings.ToLower(l), "renam") || strings.Contains(l, "ens") || strings.Contains(l, "eth") {
			o.say("udev %s", l)
		}
	}
}

// rootState reports how / is mounted and how the root's check and remount
// went.
func (o out) rootState() {
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		for _, l := range lines(string(b)) {
			if f := strings.Fields(l); len(f) >= 4 && f[1] == "/" {
				o.say("root dev=%s opts=%s", f[0], f[3])
			}
		}
	}
	for _, u := range []string{"systemd-fsck-root.service", "systemd-remount-fs.service"} {
		s, _ := run("systemctl", "show", "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus", "-p", "ConditionResult", u)
		o.say("unit %s %s", u, strings.Join(lines(s), " "))
	}
	s, _ := run("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "systemd-fsck-root.service")
	for _, l := range lines(s) {
		o.say("fsck-root %s", l)
	}
}

// restart restarts unit and reports how it went.
func (o out) restart(unit string) {
	t0 := time.Now()
	s, err := run("systemctl", "restart", unit)
	o.say("restart unit=%s rc=%d t=%.3f seconds=%.3f %s", unit, exitCode(err), uptime(), time.Since(t0).Seconds(), strings.Join(lines(s), " | "))
}

// lifecycle re-executes systemd, isolates rescue.target and goes back to
// the default target, reporting after each step the keeper's pid and
// systemd's state; in rescue.target it also reports the addresses (the
// root's network stack has been stopped).
func (o out) lifecycle() {
	steps := []struct {
		name string
		argv []string
	}{
		{"daemon-reexec", []string{"systemctl", "daemon-reexec"}},
		{"isolate-rescue", []string{"systemctl", "isolate", "rescue.target"}},
		{"isolate-default", []string{"systemctl", "isolate", "default.target"}},
	}
	for _, st := range steps {
		s, err := run(st.argv...)
		time.Sleep(2 * time.Second) // let the stopped units' stop actions act
		state, _ := run("systemctl", "is-system-running")
		if st.name == "isolate-default" {
			state, _ = run("systemctl", "is-system-running", "--wait")
		}
		o.say("lifecycle %s rc=%d keeper=%s state=%s t=%.3f %s", st.name, exitCode(err), keeperPid(), strings.TrimSpace(state), uptime(), strings.Join(lines(s), " | "))
		if st.name == "isolate-rescue" {
			a, _ := run("ip", "-o", "-4", "addr", "show", "scope", "global")
			for _, l := range lines(a) {
				o.say("lifecycle rescue addr %s", l)
			}
		}
	}
}

// exitCode is a command's exit status: 0, its code, or -1 when it did not
// run or was killed.
func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	} else if err != nil {
		return -1
	}
	return 0
}

// keeperPid is the pid of the root's keeper (argv[0] "@nbdroot"), or
// "none".
func keeperPid() string {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.HasPrefix(string(b), "@nbdroot\x00") {
			return e.Name()
		}
	}
	return "none"
}

// stress writes and fsyncs blocks for before, runs during (if any), goes
// on for after, and then verifies the blocks from the device.
func (o out) stress(args map[string]string, during func(), before, after time.Duration) {
	path := args["distro.stress_file"]
	interval := time.Duration(intArg(args, "distro.stress_interval_ms", 0)) * time.Millisecond
	id := stressblock.RunID(args["distro.token"])
	const maxBlocks = 8192
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		o.say("stress blocks=0 errors=0 verify=FAIL(mkdir: %v)", err)
		return
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		o.say("stress blocks=0 errors=0 verify=FAIL(create: %v)", err)
		return
	}
	defer f.Close()

	var stop atomic.Bool
	done := make(chan int)
	failed := make([]bool, maxBlocks)
	o.say("stress started t=%.3f", uptime())
	go func() {
		n, errs := 0, 0
		for ; n < maxBlocks && !stop.Load(); n++ {
			t0 := time.Now()
			b := stressblock.Make(id, uint64(n), uint64(n), uint64(uptime()*1e9))
			op := "write"
			_, err := f.WriteAt(b, int64(n)*stressblock.Size)
			if err == nil {
				op = "fsync"
				err = f.Sync()
			}
			if err != nil {
				failed[n] = true
				if errs++; errs <= maxErrorLines {
					o.say("stress error index=%d op=%s err=%v t=%.3f", n, op, err, uptime())
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(interval - time.Since(t0))
		}
		done <- n
	}()
	time.Sleep(before)
	if during != nil {
		during()
	}
	time.Sleep(after)
	stop.Store(true)
	n := <-done
	errs := 0
	for _, b := range failed[:n] {
		if b {
			errs++
		}
	}
	o.say("stress failed=%s", ranges(failed[:n]))
	o.say("stress blocks=%d errors=%d verify=%s", n, errs, verify(path, id, failed[:n]))
}

// maxErrorLines is how many failed blocks get a line of their own; the
// "stress failed=" line lists them all.
const maxErrorLines = 10

// ranges lists the indexes of the true entries as "a-b,c,d-e", or "none".
func ranges(set []bool) string {
	var out []string
	for i := 0; i < len(set); i++ {
		if !set[i] {
			continue
		}
		j := i
		for j+1 < len(set) && set[j+1] {
			j++
		}
		if j == i {
			out = append(out, strconv.Itoa(i))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", i, j))
		}
		i = j
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

// verify re-reads every block written without error from the device (its
// pages dropped from the page cache first) and checks it.
func verify(path string, id stressblock.ID, failed []bool) string {
	unix.Sync()
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("FAIL(%v)", err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Sprintf("FAIL(fadvise: %v)", err)
	}
	b := make([]byte, stressblock.Size)
	bad, first := 0, ""
	for i := range failed {
		if failed[i] {
			continue
		}
		why := ""
		if _, err := f.ReadAt(b, int64(i)*stressblock.Size); err != nil {
			why = "read: " + err.Error()
		} else {
			why = stressblock.Check(b, id, uint64(i))
		}
		if why != "" {
			bad++
			if first == "" {
				first = fmt.Sprintf("block %d: %s", i, why)
			}
		}
	}
	if bad > 0 {
		return fmt.Sprintf("FAIL(%d bad; %s)", bad, first)
	}
	return "ok"
}

// run runs a command with a time limit and returns its combined output.
func run(argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	timer := time.AfterFunc(10*time.Minute, func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// lines splits s into its non-empty lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// cmdline returns the kernel command line's key=value words.
func cmdline() map[string]string {
	b, _ := os.ReadFile("/proc/cmdline")
	args := map[string]string{}
	for _, w := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(w, "=")
		args[k] = v
	}
	return args
}

// intArg returns the integer value of args[key], or def.
func intArg(args map[string]string, key string, def int) int {
	if n, err := strconv.Atoi(args[key]); err == nil {
		return n
	}
	return def
}

// uptime returns the seconds since boot (CLOCK_BOOTTIME), the clock of the
// kernel's printk timestamps.
func uptime() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return float64(ts.Nano()) / 1e9
}
