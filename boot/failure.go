package boot

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/config"
)

// StepError records which step of the boot failed.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string {
	msg := e.Err.Error()
	if strings.HasPrefix(msg, e.Step+":") {
		return msg
	}
	return e.Step + ": " + msg
}
func (e *StepError) Unwrap() error { return e.Err }

// Shells are looked for, in order, when the failure action is a shell.
func shells() []string { return []string{"/bin/sh", "/bin/gosh", "/bbin/gosh", "/bin/busybox"} }

// Fail applies the failure policy b after err ended the boot: one final
// message naming the step and the cause, then a shell on the console if the
// initramfs has one (reboot otherwise), or reboot, poweroff or halt after
// b.FailureDelay. PID 1 must never exit, so Fail never returns.
func Fail(log *Logger, b config.Boot, err error) {
	log.Errorf("boot failed", "%v", err)
	action := b.OnFailure
	if action == config.FailShell {
		if sh := findShell(); sh != "" {
			log.Printf("boot failed", "starting %s; nbdroot's subcommands are at hand (nbdroot probe SPEC); exit the shell to reboot", sh)
			runShell(sh)
		} else {
			log.Printf("boot failed", "no shell in the initramfs; rebooting instead")
		}
		action = config.FailReboot
	}
	cmd, verb := unix.LINUX_REBOOT_CMD_RESTART, "rebooting"
	switch action {
	case config.FailPoweroff:
		cmd, verb = unix.LINUX_REBOOT_CMD_POWER_OFF, "powering off"
	case config.FailHalt:
		cmd, verb = unix.LINUX_REBOOT_CMD_HALT, "halting"
	}
	if b.FailureDelay > 0 {
		log.Printf("boot failed", "%s in %v", verb, b.FailureDelay)
		time.Sleep(b.FailureDelay)
	} else {
		log.Printf("boot failed", "%s", verb)
	}
	unix.Sync()
	if err := unix.Reboot(cmd); err != nil {
		log.Errorf("boot failed", "%s: %v", verb, err)
	}
	for {
		time.Sleep(time.Hour)
	}
}

func findShell() string {
	for _, s := range shells() {
		if fi, err := os.Stat(s); err == nil && fi.Mode().IsRegular() {
			return s
		}
	}
	return ""
}

// runShell runs sh on the console as the session leader with the console
// as its controlling terminal, and waits for it.
func runShell(sh string) {
	argv := []string{sh}
	if sh == "/bin/busybox" {
		argv = []string{sh, "sh"}
	}
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.Env = append(os.Environ(), "PS1=(nbdroot) # ", "PATH=/bin:/sbin:/usr/bin:/usr/sbin:/bbin")
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := c.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "nbdroot: shell: %v\n", err)
	}
}
