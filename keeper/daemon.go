package keeper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/negotiate"
)

// Name is the keeper's argv[0]. systemd's shutdown spares processes whose
// argv[0] starts with '@' (they are "root storage daemons"), and the name
// tells an operator what the process is.
const Name = "@nbdroot"

// argsEnv carries the keeper's instructions (JSON of args).
const argsEnv = "NBDROOT_KEEPER"

// args is what the starter tells the keeper.
type args struct {
	Spec   config.Spec
	Device int
	Start  time.Time // the starter's log reference time
}

// argv is the keeper's argv. A plain nbdroot binary ignores the second
// word; a u-root busybox (gobusybox) needs it: its dispatcher knows no
// command "@nbdroot", so it drops argv[0] and runs the command the next word
// names, with os.Args shifted.
func argv() []string { return []string{Name, "nbdroot"} }

// Is reports whether argv, or the argv the kernel started the process with,
// is a keeper's. The kernel's copy (/proc/self/cmdline) still starts with
// Name when a u-root busybox has shifted os.Args.
func Is(argv []string) bool {
	if len(argv) > 0 && argv[0] == Name {
		return true
	}
	b, err := os.ReadFile("/proc/self/cmdline")
	return err == nil && bytes.HasPrefix(b, []byte(Name+"\x00"))
}

// Report is the keeper's one message to the process that started it.
type Report struct {
	// Ready is true once the device is live; otherwise Op and Error say
	// which step failed and why (an Error's fields).
	Ready    bool
	Op       string            `json:",omitempty"`
	Error    string            `json:",omitempty"`
	Device   int               // N of /dev/nbdN
	Endpoint string            // the server that answered
	Export   *negotiate.Export `json:",omitempty"`
	Connect  time.Duration     // dial + negotiate, retries included
	Attach   time.Duration     // handing the sockets to the kernel
	Pid      int               // the keeper's pid
}

// Error is a keeper's failure, named by the step that failed: "connect"
// (reaching the export), "attach" (handing it to the kernel), "serve"
// (keeping it attached) or "keeper" (the process itself).
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return e.Op + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// Start starts the keeper process for spec on /dev/nbdN and waits until it
// reports the device live or gives up; its failure is an *Error. The
// keeper's console is console (nil: none; it logs to /dev/kmsg as well). The
// keeper dials, negotiates and attaches by itself: TLS state cannot cross an
// exec, and the process that serves the device must be the one that
// reconnects it.
func Start(ctx context.Context, log *bootlog.Logger, spec config.Spec, device int, console *os.File) (*Report, error) {
	fail := func(err error) (*Report, error) { return nil, &Error{Op: "keeper", Err: err} }
	a, err := json.Marshal(args{Spec: spec, Device: device, Start: log.Start()})
	if err != nil {
		return fail(fmt.Errorf("encode spec: %w", err))
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	defer r.Close()
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self)
	cmd.Args = argv()
	cmd.Env = append(os.Environ(), argsEnv+"="+string(a))
	if console != nil {
		cmd.Stdout, cmd.Stderr = console, console
	}
	cmd.ExtraFiles = []*os.File{w} // fd 3
	// A session of its own: no console signals, no controlling terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fail(fmt.Errorf("start %s: %w", self, err))
	}
	w.Close()
	stop := context.AfterFunc(ctx, func() { r.SetReadDeadline(time.Now()) })
	defer stop()
	line, rerr := bufio.NewReader(r).ReadBytes('\n')
	var rep Report
	if rerr != nil || json.Unmarshal(line, &rep) != nil {
		if ctx.Err() != nil {
			_ = cmd.Process.Kill()
		}
		werr := cmd.Wait()
		return fail(fmt.Errorf("exited without reporting (%v)", werr))
	}
	if !rep.Ready {
		_ = cmd.Wait()
		return nil, &Error{Op: rep.Op, Err: errors.New(rep.Error)}
	}
	// The keeper outlives us; its parent (PID 1, later the real init)
	// reaps it.
	_ = cmd.Process.Release()
	return &rep, nil
}

// Signals understood by a keeper.
const (
	// SigDetach asks the keeper to stop after `nbdroot detach` disconnected
	// its device.
	SigDetach = unix.SIGUSR1
	// SigFollowRoot tells the keeper that PID 1 has switched root: it
	// chroots into PID 1's root so as not to pin the initramfs.
	SigFollowRoot = unix.SIGUSR2
)

// Main is the keeper process's main (argv[0] Name, see Is): it takes on the
// daemon's identity, then connects, attaches and serves the device until it
// is detached. It logs its own errors.
func Main() error {
	var a args
	if err := json.Unmarshal([]byte(os.Getenv(argsEnv)), &a); err != nil {
		return &Error{Op: "keeper", Err: fmt.Errorf("bad %s: %w", argsEnv, err)}
	}
	os.Unsetenv(argsEnv)
	// ps and top show the command name, which would be the initramfs's
	// "init" otherwise.
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte("nbdroot-keeper\x00")[0])), 0, 0, 0)
	// The signals that systemd and the console broadcast do not stop a
	// keeper: only `nbdroot detach` (or the kernel) does.
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), SigDetach)
	defer stop()
	log := bootlog.New(os.Stderr, a.Start)
	log.OpenKmsg()
	k := &keeper{log: log, step: "keeper " + nbddev.Name(a.Device), spec: a.Spec, dev: a.Device, status: os.NewFile(3, "status")}
	err := k.run(ctx, k.followRoot())
	if err != nil {
		log.Errorf(k.step, "%v", err)
	}
	k.dir.Release(k.dev)
	return err
}

// followRoot prepares the duty of following PID 1's root: when PID 1
// signals that it switched root, the keeper chroots into PID 1's root so
// that it does not keep the initramfs as its root. /proc is opened and the
// signal subscribed now, before the device is ready: after switch_root the
// keeper's own /proc is gone with the initramfs, and an unsubscribed signal
// would kill it.
func (k *keeper) followRoot() duty {
	proc, err := unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, SigFollowRoot)
	return func(ctx context.Context) error {
		defer signal.Stop(sig)
		defer unix.Close(proc)
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-sig:
			}
			if err := chrootAt(proc, "1/root"); err != nil {
				k.log.Errorf(k.step, "follow PID 1's root: %v", err)
			}
		}
	}
}

// chrootAt makes the directory dir, relative to dirfd, the root and the
// working directory.
func chrootAt(dirfd int, dir string) error {
	root, err := unix.Openat(dirfd, dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if err := unix.Fchdir(root); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}
