// Package bootlog is nbdroot's log: one line per event, written once to the
// console and as a record to /dev/kmsg, with the time since boot began. PID 1,
// the keeper and the interactive subcommands share it. It imports only the
// standard library and x/sys/unix.
package bootlog

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Logger writes one line per event to the console and to /dev/kmsg, so that
// `dmesg | grep nbdroot` tells the story of the boot after the fact:
//
//	nbdroot: network: eth0 10.0.2.15/24 from DHCP server 10.0.2.2 (+0.09s)
//
// When the console is the kernel's console, a line the kernel will echo from
// /dev/kmsg (its level is below the console log level) is not written to the
// console as well: each line appears once.
type Logger struct {
	start   time.Time
	console io.Writer
	mu      sync.Mutex
	kmsg    io.WriteCloser // nil until /dev is mounted
	echoed  bool           // console is /dev/console: the kernel echoes kmsg there
	debug   bool
	quiet   bool // errors only on the console
}

// New returns a Logger writing to console, measuring elapsed time from
// start (for a keeper, ProcessStart; PID 1 rebases on ExecAge once /proc
// and /dev are mounted, so that its offsets count from the kernel's exec of
// /init).
func New(console io.Writer, start time.Time) *Logger {
	return &Logger{start: start, console: console}
}

// Rebase makes the logger measure elapsed time from start.
func (l *Logger) Rebase(start time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.start = start
}

// OpenKmsg starts copying log lines to /dev/kmsg. A missing /dev/kmsg is not
// an error: the console still gets everything.
func (l *Logger) OpenKmsg() {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	echoed := isKernelConsole(l.console)
	l.mu.Lock()
	l.kmsg, l.echoed = f, echoed
	l.mu.Unlock()
}

// devkmsgKnob is the kernel's limit on what userspace writes to /dev/kmsg:
// "ratelimit" (the default) lets through 10 records per 5 seconds and
// drops the rest, "on" all of them.
const devkmsgKnob = "/proc/sys/kernel/printk_devkmsg"

// Unlimit lifts the kernel's rate limit on /dev/kmsg writes for as long as
// nbdroot's busy boot logs, since its console lines are the kernel's echo of
// those records and a dropped record would be a line missing on the
// console. It returns the function that puts the setting back (the real
// system keeps its own). A setting other than the default "ratelimit" (from
// printk.devkmsg= on the command line) is left alone.
func Unlimit() (restore func()) {
	b, err := os.ReadFile(devkmsgKnob)
	if err != nil || strings.TrimSpace(string(b)) != "ratelimit" {
		return func() {}
	}
	// The kernel takes a value only with its newline.
	if os.WriteFile(devkmsgKnob, []byte("on\n"), 0) != nil {
		return func() {}
	}
	return func() { _ = os.WriteFile(devkmsgKnob, []byte("ratelimit\n"), 0) }
}

// isKernelConsole reports whether w is /dev/console (character device 5:1),
// where the kernel prints kmsg records itself.
func isKernelConsole(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(uint64(st.Rdev)) == 5 && unix.Minor(uint64(st.Rdev)) == 1
}

// consoleLevel is the kernel's console log level (the first field of
// /proc/sys/kernel/printk): records below it are printed on the console.
// It is read per line because systemd and sysctl change it at run time.
func consoleLevel() int {
	b, err := os.ReadFile("/proc/sys/kernel/printk")
	f := strings.Fields(string(b))
	if err != nil || len(f) == 0 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// SetQuiet keeps all but errors off the console (an interactive command
// such as attach); /dev/kmsg still gets every line.
func (l *Logger) SetQuiet(on bool) {
	l.mu.Lock()
	l.quiet = on
	l.mu.Unlock()
}

// SetDebug enables Debugf output.
func (l *Logger) SetDebug(on bool) {
	l.mu.Lock()
	l.debug = on
	l.mu.Unlock()
}

// ProcessStart returns when this process began, on the wall clock: now
// less its age, the kernel's starttime in /proc/self/stat (set at fork, in
// clock ticks of 10 ms since boot) against CLOCK_BOOTTIME. It accounts for
// the exec and the Go runtime's start, which no log line can. If the age
// cannot be read, it is now.
func ProcessStart() time.Time {
	now := time.Now()
	age, err := ProcessAge()
	if err != nil {
		return now
	}
	return now.Add(-age)
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times, fixed at 100
// on every Linux architecture nbdroot runs on.
const clockTicks = 100

// CPUTime is how the machine's CPUs have spent their time since boot,
// summed over CPUs, to 10 ms (/proc/stat's "cpu" line). Two readings tell
// how a step used the CPU: on one CPU, a step that leaves it idle can
// overlap with work that needs it, and the user/kernel split tells Go's
// work from the kernel's (module loads, sysfs, the network stack).
type CPUTime struct {
	User   time.Duration // user and nice
	Kernel time.Duration // system, irq and softirq
	Idle   time.Duration // idle and iowait
}

// Sub returns the time spent from earlier to c.
func (c CPUTime) Sub(earlier CPUTime) CPUTime {
	return CPUTime{User: c.User - earlier.User, Kernel: c.Kernel - earlier.Kernel, Idle: c.Idle - earlier.Idle}
}

// ReadCPUTime reads the machine's CPUTime.
func ReadCPUTime() (CPUTime, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTime{}, err
	}
	return cpuFromStat(string(b))
}

// cpuFromStat is ReadCPUTime of a /proc/stat.
func cpuFromStat(stat string) (CPUTime, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return CPUTime{}, fmt.Errorf("/proc/stat: no cpu line with 7 fields")
	}
	var ticks [7]uint64 // user nice system idle iowait irq softirq
	for i := range ticks {
		n, err := strconv.ParseUint(f[1+i], 10, 64)
		if err != nil {
			return CPUTime{}, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks[i] = n
	}
	d := func(n uint64) time.Duration { return time.Duration(n) * time.Second / clockTicks }
	return CPUTime{User: d(ticks[0] + ticks[1]), Kernel: d(ticks[2] + ticks[5] + ticks[6]), Idle: d(ticks[3] + ticks[4])}, nil
}

// ProcessAge returns how long ago this process was forked, to 10 ms.
func ProcessAge() (time.Duration, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, err
	}
	return ageFromStat(string(b), time.Duration(ts.Nano()))
}

// ExecAge returns how long ago the kernel ran the init process: the time
// since its "Run /init as init process" line in the kernel log (the log's
// last 16 KiB, or all of it), on CLOCK_BOOTTIME, the clock of the log's stamps at
// boot and of /proc/uptime. PID 1 cannot ask /proc/self/stat: its starttime
// is the fork of the kernel thread that became it, early in the kernel's
// own start. It needs CAP_SYSLOG and the log's timestamps (printk.time).
func ExecAge() (time.Duration, error) {
	// READ_ALL gives the newest records that fit: the line is among the
	// last few, and formatting the whole ring (128 KiB or more) cost PID 1
	// 10-20 ms under emulation. The whole ring is the fallback.
	buf := make([]byte, execTail)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return 0, fmt.Errorf("kernel log: %w", err)
	}
	at, err := execStamp(buf[:n])
	if err != nil {
		size, serr := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
		if serr != nil || size <= len(buf) {
			return 0, err
		}
		buf = make([]byte, size)
		if n, err = unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf); err != nil {
			return 0, fmt.Errorf("kernel log: %w", err)
		}
		if at, err = execStamp(buf[:n]); err != nil {
			return 0, err
		}
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, err
	}
	age := time.Duration(ts.Nano()) - at
	if age < 0 || age > 10*time.Minute {
		return 0, fmt.Errorf("kernel log: init ran %v ago: not a boot in progress", age.Round(time.Second))
	}
	return age, nil
}

// execTail is how much of the kernel log's end ExecAge reads first.
const execTail = 16 << 10

// maxStamp bounds a kernel log stamp, in seconds: a century, far inside
// time.Duration.
const maxStamp = 100 * 365 * 24 * 3600

// execStamp returns the stamp of the last "Run PATH as init process" line
// of a kernel log as syslog(2) gives it ("<6>[    3.568880] Run /init as
// init process"). It reads lines from the end, where the line is, and
// copies none.
func execStamp(log []byte) (time.Duration, error) {
	const tail = " as init process"
	for rest := bytes.TrimRight(log, "\n"); len(rest) > 0; {
		i := bytes.LastIndexByte(rest, '\n')
		line := rest[i+1:]
		rest = bytes.TrimRight(rest[:max(i, 0)], "\n")
		if !bytes.HasSuffix(line, []byte(tail)) {
			continue
		}
		open, close := bytes.IndexByte(line, '['), bytes.IndexByte(line, ']')
		if open < 0 || close < open || !bytes.HasPrefix(line[close+1:], []byte(" Run ")) {
			continue
		}
		sec, err := strconv.ParseFloat(string(bytes.TrimSpace(line[open+1:close])), 64)
		if err != nil || !(sec >= 0 && sec <= maxStamp) { // NaN fails both
			return 0, fmt.Errorf("kernel log: bad stamp in %q", line)
		}
		return time.Duration(sec * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("kernel log: no stamped line%s (printk.time off, or the ring overwritten)", tail)
}

// ageFromStat is the age of the process whose /proc/PID/stat is stat at
// boot time now: field 22, starttime, counted after the command name,
// which may hold spaces and parentheses.
func ageFromStat(stat string, now time.Duration) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/self/stat: no command name")
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3, the state
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/self/stat: %d fields", len(f)+2)
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/self/stat: starttime: %w", err)
	}
	return max(now-time.Duration(ticks)*time.Second/clockTicks, 0), nil
}

// Elapsed returns the time since the logger's start.
func (l *Logger) Elapsed() time.Duration { return time.Since(l.Start()) }

// Start returns the logger's reference time.
func (l *Logger) Start() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.start
}

// Printf logs one line for step (an empty step logs the bare message).
func (l *Logger) Printf(step, format string, a ...any) {
	l.emit(6, step, fmt.Sprintf(format, a...))
}

// Errorf logs one line for step at error level.
func (l *Logger) Errorf(step, format string, a ...any) {
	l.emit(3, step, fmt.Sprintf(format, a...))
}

// Debugf logs one line for step when debug logging is on.
func (l *Logger) Debugf(step, format string, a ...any) {
	l.mu.Lock()
	on := l.debug
	l.mu.Unlock()
	if on {
		l.emit(7, step, fmt.Sprintf(format, a...))
	}
}

func (l *Logger) emit(level int, step, msg string) {
	msg = strings.TrimRight(msg, "\n")
	if step != "" {
		msg = step + ": " + msg
	}
	line := fmt.Sprintf("nbdroot: %s (+%.2fs)", msg, l.Elapsed().Seconds())
	l.mu.Lock()
	defer l.mu.Unlock()
	kernelPrints := l.kmsg != nil && l.echoed && level < consoleLevel()
	if (!l.quiet || level <= 3) && !kernelPrints {
		fmt.Fprintln(l.console, line)
	}
	if l.kmsg != nil {
		// One write is one kmsg record; "<N>" sets its level. The kernel
		// caps a record at about 1 KiB. The newline ends the record: one
		// without it stays open for a continuation, and neither the
		// console nor dmesg shows it until the next record arrives.
		rec := fmt.Sprintf("<%d>%s", level, line)
		_, _ = io.WriteString(l.kmsg, rec[:min(len(rec), 1000)]+"\n")
	}
}

// DebugWriter returns an io.Writer whose lines become Debugf lines of step:
// for libraries that log through the standard log package (u-root's DHCP
// client prints whole packets).
func (l *Logger) DebugWriter(step string) io.Writer {
	return debugWriter{l, step}
}

type debugWriter struct {
	l    *Logger
	step string
}

func (w debugWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.l.Debugf(w.step, "%s", line)
	}
	return len(p), nil
}
