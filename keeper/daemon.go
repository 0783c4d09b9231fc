package keeper

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/nbddev"
)

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
