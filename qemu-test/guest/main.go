// Command guest is the /init of the initramfs that qemu-test's TestGuest
// boots to run Go test binaries against the real kernel. It mounts /proc,
// /sys and /dev, runs every /guest/*.test with NBDROOT_IN_GUEST=1 and the
// -test.run pattern from guest.run= on the kernel command line, prints
// "GUEST: NAME exit=CODE" after each, the kernel's nbd and netlink messages
// as "KMSG: ..." lines, then "GUEST: done", and powers the machine off.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func say(format string, a ...any) { fmt.Printf("GUEST: "+format+"\n", a...) }

func main() {
	for _, m := range []struct{ dir, fstype string }{{"/proc", "proc"}, {"/sys", "sysfs"}, {"/dev", "devtmpfs"}} {
		_ = os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.fstype, m.dir, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			say("mount %s: %v", m.dir, err)
		}
	}
	run, timeout := "^TestGuest", "120s"
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(f, "guest.run="); ok {
				run = v
			}
			if v, ok := strings.CutPrefix(f, "guest.timeout="); ok {
				timeout = v
			}
		}
	}
	tests, _ := filepath.Glob("/guest/*.test")
	sort.Strings(tests)
	if len(tests) == 0 {
		say("no /guest/*.test")
	}
	for _, bin := range tests {
		name := filepath.Base(bin)
		say("%s: -test.run %s", name, run)
		cmd := exec.Command(bin, "-test.v", "-test.run", run, "-test.timeout", timeout)
		cmd.Env = []string{"NBDROOT_IN_GUEST=1", "PATH=/bin:/sbin", "HOME=/"}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		cmd.Dir = "/"
		t0 := time.Now()
		err := cmd.Run()
		code := 0
		if err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else {
				say("%s: %v", name, err)
			}
		}
		say("%s exit=%d (%.1fs)", name, code, time.Since(t0).Seconds())
	}
	dumpKmsg("nbd", "netlink")
	say("done")
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

// dumpKmsg prints the kernel log lines that mention any of words.
func dumpKmsg(words ...string) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		say("kmsg: %v", err)
		return
	}
	defer unix.Close(fd)
	// Each read returns one record; EAGAIN ends the log, EPIPE means
	// records were overwritten before we read them.
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue
		}
		if err != nil || n <= 0 {
			return
		}
		// "PRIO,SEQ,TIME,FLAGS;MESSAGE\n KEY=VALUE\n...": keep MESSAGE.
		rec, _, _ := strings.Cut(string(buf[:n]), "\n")
		_, msg, ok := strings.Cut(rec, ";")
		for _, w := range words {
			if ok && strings.Contains(msg, w) {
				fmt.Printf("KMSG: %s\n", msg)
				break
			}
		}
	}
}
