package boot

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/keeper"
)

// StepError is the boot's error: which step failed, and why. Step is one of
// "early mounts", "config", "network", "connect", "attach", "mount" and
// "switch_root", or "keeper" when the keeper process itself failed; the
// keeper runs connect and attach and names the one that failed
// (keeper.Error). The steps' own errors do not repeat the step's name.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// SigRetry asks PID 1, sitting in the rescue shell's failure policy, to run
// the boot again (`nbdroot boot --retry`).
const SigRetry = unix.SIGUSR1

// retryPath holds the RetryRequest that comes with SigRetry.
const retryPath = keeper.DefaultRunDir + "/retry.json"

// RetryRequest is what `nbdroot boot --retry` asks of PID 1: boot again,
// optionally with another command line or configuration file.
type RetryRequest struct {
	Cmdline    string `json:",omitempty"`
	ConfigPath string `json:",omitempty"`
}

// RequestRetry is `nbdroot boot --retry` run from the rescue shell: it leaves
// r for PID 1 and signals it. PID 1 then ends the shell and boots again,
// resuming where the failed attempt stopped.
func RequestRetry(r RetryRequest) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(keeper.DefaultRunDir, 0o755); err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	if err := os.WriteFile(retryPath, b, 0o644); err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	if err := unix.Kill(1, SigRetry); err != nil {
		return fmt.Errorf("retry: signal PID 1: %w", err)
	}
	return nil
}

// Fail applies the failure policy b after err ended the boot: one final
// message naming the step and the cause, then a shell on the console if the
// initramfs has one (reboot otherwise), or reboot, poweroff or halt after
// b.FailureDelay. PID 1 must never exit: Fail returns only when the
// operator asked for a retry from the shell.
func Fail(log *bootlog.Logger, b config.Boot, err error) RetryRequest {
	log.Errorf("boot failed", "%v", err)
	action := b.OnFailure
	if action == config.FailShell {
		if sh := findShell(); sh != "" {
			log.Printf("boot failed", "starting %s; nbdroot's subcommands are at hand (nbdroot probe SPEC, nbdroot boot --retry); exit the shell to reboot", sh)
			if req, retry := runShell(log, sh); retry {
				log.Printf("retry", "booting again")
				return req
			}
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

// findShell returns the first shell the initramfs has, or "".
func findShell() string {
	for _, s := range []string{"/bin/sh", "/bin/gosh", "/bbin/gosh", "/bin/busybox"} {
		if fi, err := os.Stat(s); err == nil && fi.Mode().IsRegular() {
			return s
		}
	}
	return ""
}

// runShell runs sh on the console as the session leader with the console
// as its controlling terminal, until it exits or a retry is requested; then
// it ends the shell's session and returns the request.
func runShell(log *bootlog.Logger, sh string) (RetryRequest, bool) {
	retry := make(chan os.Signal, 1)
	signal.Notify(retry, SigRetry)
	defer signal.Stop(retry)
	_ = os.Remove(retryPath)
	c := exec.Command(sh)
	if sh == "/bin/busybox" {
		c.Args = append(c.Args, "sh")
	}
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.Env = append(os.Environ(), "PS1=(nbdroot) # ", "PATH=/bin:/sbin:/usr/bin:/usr/sbin:/bbin")
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := c.Start(); err != nil {
		log.Errorf("shell", "%v", err)
		return RetryRequest{}, false
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	select {
	case <-exited:
		return RetryRequest{}, false
	case <-retry:
	}
	// The shell is its session's leader: its process group is its pid.
	_ = unix.Kill(-c.Process.Pid, unix.SIGKILL)
	<-exited
	var req RetryRequest
	if b, err := os.ReadFile(retryPath); err == nil {
		if err := json.Unmarshal(b, &req); err != nil {
			log.Errorf("retry", "%s: %v; retrying with the same spec", retryPath, err)
		}
	}
	_ = os.Remove(retryPath)
	return req, true
}
