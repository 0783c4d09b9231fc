// Package ioctl drives the kernel's nbd driver through its ioctl interface:
// configure /dev/nbdN with a negotiated socket and serve it with NBD_DO_IT.
//
// The ioctl interface has two properties that shape everything here:
//
//   - NBD_SET_SOCK binds the device to the calling task (thread), and the
//     kernel refuses a second task with EBUSY ("Device being setup by another
//     task"). So the whole sequence — CLEAR_SOCK, SET_BLKSIZE, SET_SIZE,
//     SET_TIMEOUT, SET_FLAGS, SET_SOCK, DO_IT — runs on one locked OS thread.
//   - NBD_DO_IT blocks for the life of the device, and a signal delivered to
//     the thread in it interrupts the wait and tears the device down. Serve
//     therefore blocks every blockable signal on its thread (SIGSTOP cannot be
//     blocked: that is what the netlink interface is for).
//
// x/sys/unix carries no NBD constants; they are defined here from the
// kernel's include/uapi/linux/nbd.h (_IO(0xab, n)).
package ioctl

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/nbdroot/nbdroot/nbddev"
	"golang.org/x/sys/unix"
)

// ioctl request numbers: _IO(0xab, n) on x86, arm and the other "generic"
// ioctl architectures.
const (
	nbdSetSock       = 0xab00
	nbdSetBlksize    = 0xab01
	nbdSetSize       = 0xab02
	nbdDoIt          = 0xab03
	nbdClearSock     = 0xab04
	nbdClearQue      = 0xab05
	nbdSetSizeBlocks = 0xab07
	nbdDisconnect    = 0xab08
	nbdSetTimeout    = 0xab09
	nbdSetFlags      = 0xab0a
)

// Params are what the kernel needs to know about the export.
type Params struct {
	// Size is the export size in bytes.
	Size uint64
	// BlockSize is the logical block size: a power of two, 512..page size.
	BlockSize uint32
	// Flags are the transmission flags passed to NBD_SET_FLAGS: the
	// server's, with NBD_FLAG_READ_ONLY added for a read-only attach.
	Flags uint16
	// Timeout is the per-request timeout; 0 leaves the kernel's default.
	Timeout time.Duration
	// ReadOnly also sets the block device read-only with BLKROSET, for
	// kernels that ignore the flag.
	ReadOnly bool
}

// Error is a failed operation on a device, as in
// "ioctl: /dev/nbd0: NBD_SET_SOCK: device or resource busy".
type Error struct {
	// Device is the device node.
	Device string
	// Op is the operation (an ioctl's name, "open"), or empty when Err
	// says it.
	Op  string
	Err error
}

func (e *Error) Error() string {
	s := "ioctl: " + e.Device + ": "
	if e.Op != "" {
		s += e.Op + ": "
	}
	return s + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Device is an open /dev/nbdN.
type Device struct {
	f     *os.File
	index int
}

// Open opens /dev/nbdN for configuration.
func Open(index int) (*Device, error) {
	f, err := os.OpenFile(nbddev.Path(index), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Device: nbddev.Path(index), Op: "open", Err: errors.Unwrap(err)}
	}
	return &Device{f: f, index: index}, nil
}

// Close closes the device file. It does not disconnect the device.
func (d *Device) Close() error { return d.f.Close() }

// err is the package's error for an operation on d.
func (d *Device) err(op string, err error) error {
	return &Error{Device: nbddev.Path(d.index), Op: op, Err: err}
}

func (d *Device) ioctl(req uintptr, arg uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), req, arg); errno != 0 {
		return errno
	}
	return nil
}

// Serve configures the device with sock (a connected stream socket in the
// NBD transmission phase; the kernel takes its own reference) and runs
// NBD_DO_IT until the device is disconnected or the connection dies.
//
// ready is called after the configuration succeeded, just before DO_IT; the
// device becomes usable once DO_IT has started it (nbddev.Sysfs.Live reports that).
// Serve returns nil after a requested disconnect and an error otherwise.
// It locks the calling goroutine to its thread and blocks signals there for
// its whole duration, and the thread is discarded afterwards.
func (d *Device) Serve(sock int, p Params, ready func()) error {
	runtime.LockOSThread()
	// The thread is left locked on purpose: with its signal mask changed and
	// the nbd task binding on it, it must never run other goroutines. Go
	// terminates a thread whose goroutine exits while locked.
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, &old); err != nil {
		return d.err("block signals", err)
	}
	if err := d.configure(sock, p); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	err := d.ioctl(nbdDoIt, 0)
	// Whatever ended DO_IT, leave the device clean for the next attempt:
	// fail queued requests and drop the socket.
	_ = d.ioctl(nbdClearQue, 0)
	_ = d.ioctl(nbdClearSock, 0)
	if err != nil {
		return d.err("NBD_DO_IT", err)
	}
	return nil
}

// configure runs the setup ioctls in the order the kernel expects.
func (d *Device) configure(sock int, p Params) error {
	if err := nbddev.CheckBlockSize(int64(p.BlockSize)); err != nil {
		return d.err("", fmt.Errorf("block size %w", err))
	}
	if p.Size == 0 || p.Size%uint64(p.BlockSize) != 0 {
		return d.err("", fmt.Errorf("size %d is not a positive multiple of block size %d", p.Size, p.BlockSize))
	}
	steps := []struct {
		name string
		req  uintptr
		arg  uintptr
	}{
		// CLEAR_SOCK first: a device left configured by an earlier, dead
		// keeper would refuse SET_SOCK.
		{"NBD_CLEAR_SOCK", nbdClearSock, 0},
		{"NBD_SET_BLKSIZE", nbdSetBlksize, uintptr(p.BlockSize)},
		{"NBD_SET_SIZE", nbdSetSize, uintptr(p.Size)},
		{"NBD_SET_TIMEOUT", nbdSetTimeout, uintptr(p.Timeout / time.Second)},
		{"NBD_SET_FLAGS", nbdSetFlags, uintptr(p.Flags)},
		{"NBD_SET_SOCK", nbdSetSock, uintptr(sock)},
	}
	for _, s := range steps {
		if s.req == nbdSetTimeout && p.Timeout == 0 {
			continue
		}
		if err := d.ioctl(s.req, s.arg); err != nil {
			if errors.Is(err, unix.EBUSY) {
				err = fmt.Errorf("device is in use (attached by another process?): %w", err)
			}
			return d.err(s.name, err)
		}
	}
	if p.ReadOnly {
		// NBD_SET_FLAGS marks the disk read-only when DO_IT starts it;
		// BLKROSET also covers kernels that ignore the flag.
		if err := unix.IoctlSetPointerInt(int(d.f.Fd()), unix.BLKROSET, 1); err != nil {
			return d.err("BLKROSET", err)
		}
	}
	return nil
}

// Disconnect asks the kernel to disconnect the device: it sends NBD_CMD_DISC
// to the server after in-flight requests and makes DO_IT return.
func (d *Device) Disconnect() error {
	if err := d.ioctl(nbdDisconnect, 0); err != nil {
		return d.err("NBD_DISCONNECT", err)
	}
	return nil
}
