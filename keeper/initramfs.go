package keeper

import (
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/shutdown"
)

// switchedFD is the keeper's end of the switch pipe (StartOptions.Switched).
const switchedFD = 4

// initramfsAfterSwitch holds what the root's keeper needs to free the
// initramfs once the root's init runs: the initramfs's root directory,
// opened before the keeper entered the exitrd, and its end of the switch
// pipe.
type initramfsAfterSwitch struct {
	root     int
	switched *os.File
}

// openInitramfs opens the keeper's root, the initramfs, and takes its end
// of the switch pipe. It runs before enterRoot, while "/" is the
// initramfs.
func openInitramfs() (*initramfsAfterSwitch, error) {
	root, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/ (the initramfs)", Err: err}
	}
	return &initramfsAfterSwitch{root: root, switched: os.NewFile(switchedFD, "switch pipe")}, nil
}

// freeLater frees the initramfs (shutdown.FreeInitramfs, as switch_root
// would), then the keeper's start-up garbage (see report), once its switch
// pipe ends: PID 1 holds the other end open,
// close-on-exec, until it executes the root's init. Deleting its files
// took 0.12 s of the one virtual CPU of the test rig in PID 1, between
// the mount and the root's init; here it runs at idle priority
// (SCHED_IDLE), taking only CPU time the root's start leaves unused
// (it waits on the root's reads), or another CPU. A PID 1 that never gets
// that far keeps its initramfs (its rescue shell needs it).
func (k *keeper) freeLater(x *initramfsAfterSwitch) {
	go func() {
		defer unix.Close(x.root)
		defer x.switched.Close()
		if _, err := io.Copy(io.Discard, x.switched); err != nil {
			k.log.Errorf(k.step, "waiting for the root's init: %v; the initramfs is not freed", err)
			return
		}
		// The thread is never unlocked: it ends with this goroutine, and
		// its priority with it.
		runtime.LockOSThread()
		if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0); err != nil {
			k.log.Debugf(k.step, "sched_setattr SCHED_IDLE: %v; freeing the initramfs at normal priority", err)
		}
		t := time.Now()
		f := shutdown.FreeInitramfs(x.root)
		k.log.Printf(k.step, "freed the initramfs once the root's init ran: %d files, %.1f MiB, in %.2fs", f.Files, float64(f.Bytes)/(1<<20), time.Since(t).Seconds())
		// The start's garbage (see report), the listing's buffers and
		// this thread's stacks go back now, not at the scavenger's pace.
		debug.FreeOSMemory()
		k.logMemory()
	}()
}
