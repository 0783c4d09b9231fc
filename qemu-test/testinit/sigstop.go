package main

import (
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"
)

// sigstopIOTimeout bounds the I/O after the signals: a device that lost its
// connection for good would otherwise hang the guest until the test's
// timeout, with nothing on the console to say why.
const sigstopIOTimeout = 90 * time.Second

// sigstop runs the sigstop mode (testinit.mode=sigstop): what systemd's
// shutdown does to every process it does not kill, kill(-1, SIGSTOP) and
// then kill(-1, SIGCONT) (PID 1 is not signalled by its own broadcast),
// then I/O on the root: a write, an fsync, and a read back from the device. Console lines:
//
//	TESTINIT: sigstop stopped=ok|ERRNO t=UPTIME
//	TESTINIT: sigstop terminated=ok|ERRNO t=UPTIME
//	TESTINIT: sigstop continued=ok|ERRNO t=UPTIME
//	TESTINIT: sigstop io=ok|FAIL(...)|TIMEOUT seconds=D
//	TESTINIT: sigstop keeper-after=PID:@nbdroot|none
//
// It returns false when the I/O did not finish, so that the caller powers
// off without syncing.
func sigstop(args map[string]string) bool {
	lockMemory()
	stopErr := unix.Kill(-1, unix.SIGSTOP)
	say("sigstop stopped=%s t=%.3f", errName(stopErr), uptime())
	// systemd's killall sends its SIGTERMs between the two broadcasts (a
	// keeper ignores it); give the stopped processes a moment in that state.
	termErr := unix.Kill(-1, unix.SIGTERM)
	say("sigstop terminated=%s t=%.3f", errName(termErr), uptime())
	time.Sleep(500 * time.Millisecond)
	contErr := unix.Kill(-1, unix.SIGCONT)
	say("sigstop continued=%s t=%.3f", errName(contErr), uptime())

	token := args["testinit.token"]
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- writeReadBack("/nbdroot-test/after-sigstop", token) }()
	clean := true
	select {
	case err := <-done:
		result := "ok"
		if err != nil {
			result = fmt.Sprintf("FAIL(%v)", err)
		}
		say("sigstop io=%s seconds=%.3f", result, time.Since(t0).Seconds())
	case <-time.After(sigstopIOTimeout):
		say("sigstop io=TIMEOUT seconds=%.3f", time.Since(t0).Seconds())
		clean = false
	}
	say("sigstop keeper-after=%s", keeper())
	return clean
}

// writeReadBack writes data to path with an fsync and checks that the
// device returns the same bytes.
func writeReadBack(path, data string) error {
	if err := writeSynced(path, data); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	f, err := openUncached(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if got := string(b); got != data {
		return fmt.Errorf("read back %q, wrote %q", got, data)
	}
	return nil
}
