package testrig

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 5 * time.Second

// Process is a child process started for a test. Its stdout and stderr are
// kept in memory (see Output) and it is killed when the test ends.
type Process struct {
	argv []string
	cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{} // closed when Wait returns
	err  error         // Wait's result, valid after done
}

// Start starts argv[0] with argv[1:] and registers a cleanup that stops it.
// The child is also sent SIGKILL if the test binary dies (Pdeathsig, which
// fires when the starting OS thread exits: do not call Start from a goroutine
// that exits with its thread locked).
func Start(t testing.TB, argv ...string) *Process {
	t.Helper()
	p := &Process{argv: argv, out: &SyncBuffer{}}
	if err := p.start(); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	t.Cleanup(func() { p.Stop() })
	return p
}

func (p *Process) start() error {
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", strings.Join(p.argv, " "), err)
	}
	p.cmd = cmd
	p.done = make(chan struct{})
	go func(done chan struct{}) {
		p.err = cmd.Wait()
		close(done)
	}(p.done)
	return nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output returns what the process has written to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Exited reports whether the process has exited, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits up to timeout for the process to exit by itself and returns
// its exit error; it kills the process and returns an error on timeout.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Stop()
		return fmt.Errorf("%s: still running after %v, killed", p.argv[0], timeout)
	}
}

// Stop sends SIGTERM, waits up to StopTimeout, then sends SIGKILL. It is safe
// to call more than once.
func (p *Process) Stop() {
	if p.cmd == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(StopTimeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// SyncBuffer is a bytes.Buffer safe for one writer and concurrent readers:
// a process's output, or a log written from several goroutines.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// killPid stops a process that is not our child (a daemon that forked):
// SIGTERM, then SIGKILL after StopTimeout. It returns when the process is
// gone or a zombie.
func killPid(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	if waitGone(pid, StopTimeout) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if waitGone(pid, StopTimeout) {
		return nil
	}
	return fmt.Errorf("pid %d survived SIGKILL", pid)
}

// waitGone polls until pid no longer runs (absent, or a zombie nobody reaped).
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// The state follows the parenthesised command name.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
