// Command testinit is the init of the root images the QEMU tests boot. It
// runs as PID 1 of the real root after nbdroot's switch_root, reports what it
// finds on the console as "TESTINIT: key=value" lines the tests assert on,
// performs the scenario named by testinit.mode= on the kernel command line,
// and powers the machine off.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func say(format string, a ...any) {
	fmt.Printf("TESTINIT: "+format+"\n", a...)
}

func main() {
	if mib := os.Getenv(hogEnv); mib != "" {
		hogMain(mib)
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	say("uptime=%.3f", float64(ts.Nano())/1e9)
	say("pid=%d", os.Getpid())
	args := cmdline()
	root, fstype, opts := rootMount()
	say("root=%s fstype=%s opts=%s", root, fstype, opts)
	say("keeper=%s", keeper())
	say("keeper_root=%s", keeperRoot())
	say("keeper_exe=%s", keeperExe())
	say("argv=%s", strings.Join(os.Args[1:], ","))
	if _, err := os.Stat("/init"); err == nil {
		say("initramfs-leftover=/init")
	}
	clean := true
	switch args["testinit.mode"] {
	case "ro":
		err := os.WriteFile("/should-fail", []byte("x"), 0o644)
		say("write-ro=%v", errName(err))
	case "stress":
		stress(args)
	case "sigstop":
		clean = sigstop(args)
	case "attach":
		attachScenario(args)
	case "exitrd":
		exitrd(args)
	case "failover":
		failover(args)
	case "clients":
		clients(args)
	case "swap":
		swapMode(args)
	default:
		token := args["testinit.token"]
		if err := writeSynced("/nbdroot-test/written", token); err != nil {
			say("write=FAIL %v", err)
		} else {
			say("write=ok token=%s", token)
		}
	}
	say("done")
	if clean {
		// A device whose I/O hangs would hang these too: a scenario that
		// saw a hang powers off without them.
		unix.Sync()
		_ = unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		unix.Sync()
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

// uptime returns the seconds since boot (CLOCK_BOOTTIME), the clock the
// kernel's console timestamps and nbdroot's log use.
func uptime() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return float64(ts.Nano()) / 1e9
}

// intArg returns the integer value of args[key], or def when it is absent
// or not a positive integer.
func intArg(args map[string]string, key string, def int) int {
	n, err := strconv.Atoi(args[key])
	if err != nil || n <= 0 {
		return def
	}
	return n
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	if errno, ok := underlying(err).(unix.Errno); ok {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

func underlying(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func writeSynced(path, data string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cmdline returns the key=value words of /proc/cmdline.
func cmdline() map[string]string {
	b, _ := os.ReadFile("/proc/cmdline")
	m := map[string]string{}
	for _, w := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(w, "=")
		m[k] = v
	}
	return m
}

// rootMount returns the source, type and options of the / mount.
func rootMount() (src, fstype, opts string) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "?", "?", err.Error()
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 4 && fs[1] == "/" {
			src, fstype, opts = fs[0], fs[2], fs[3] // the last / mount wins
		}
	}
	return src, fstype, opts
}

// keeper returns "PID:ARGV0" of the process whose argv[0] is @nbdroot.
func keeper() string {
	ents, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv0, _, _ := bytes.Cut(b, []byte{0})
		if strings.HasPrefix(string(argv0), "@") {
			found = append(found, e.Name()+":"+string(argv0))
		}
	}
	if len(found) == 0 {
		return "none"
	}
	return strings.Join(found, ",")
}

// keeperExe says which file system the keeper's executable lives on:
// "initramfs" when it is the initramfs's own binary (the exitrd bound onto
// /run/initramfs from the initramfs, no copy), "run" when it is a copy on
// /run's tmpfs.
func keeperExe() string {
	pid, _, _ := strings.Cut(keeper(), ":")
	var exe, run, exitrd unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/exe", &exe); err != nil {
		return err.Error()
	}
	switch {
	case unix.Stat("/run", &run) == nil && exe.Dev == run.Dev:
		return "run"
	case unix.Stat("/run/initramfs", &exitrd) == nil && exe.Dev == exitrd.Dev:
		return "initramfs"
	}
	return "other"
}

// keeperRoot says where the keeper's root directory is: "exitrd" when it
// is /run/initramfs (systemd's convention for root storage daemons: it runs
// from an initrd file system, never from this root), "same" when it is this
// root, "other" for anything else (the initramfs).
func keeperRoot() string {
	pid, _, _ := strings.Cut(keeper(), ":")
	var st, mine, exitrd unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/root/", &st); err != nil {
		return err.Error()
	}
	if unix.Stat("/run/initramfs", &exitrd) == nil && st.Dev == exitrd.Dev && st.Ino == exitrd.Ino {
		return "exitrd"
	}
	if unix.Stat("/", &mine) == nil && st.Dev == mine.Dev && st.Ino == mine.Ino {
		return "same"
	}
	return "other"
}
