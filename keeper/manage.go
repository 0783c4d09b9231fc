package keeper

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/poll"
	"github.com/nbdroot/nbdroot/ioctl"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/netlink"
)

// DeviceStatus is one row of `nbdroot status`: what the keeper published,
// checked against the kernel.
type DeviceStatus struct {
	State
	// Connected is the kernel's view (/sys/block/nbdN/pid and a size).
	Connected bool `json:"connected"`
	// KeeperAlive says whether the keeper process still runs.
	KeeperAlive bool `json:"keeper_alive"`
	// Managed is false for a device connected by something other than
	// nbdroot (nbd-client, another tool): only Device and Index are known.
	Managed bool `json:"managed"`
}

// Status returns every device nbdroot manages and every other connected nbd
// device, in index order.
func Status() ([]DeviceStatus, error) {
	var sys nbddev.Sysfs
	idx, err := sys.Devices()
	if err != nil {
		return nil, err
	}
	var out []DeviceStatus
	for _, i := range idx {
		st, err := RunDir{}.State(i)
		switch {
		case err == nil:
			out = append(out, DeviceStatus{State: st, Connected: sys.Live(i), KeeperAlive: Alive(st.Pid), Managed: true})
		case sys.InUse(i):
			out = append(out, DeviceStatus{State: State{Device: nbddev.Path(i), Index: i}, Connected: sys.Live(i)})
		}
	}
	return out, nil
}

// detachWait bounds how long Detach waits for the keeper to exit.
const detachWait = 10 * time.Second

// Detach disconnects /dev/nbdN cleanly: it refuses a device that is mounted
// unless force, flushes the device's cache to the server, tells the keeper
// the disconnect is wanted, disconnects through the interface the device was
// attached with, and waits for the keeper to exit. Its errors start with
// "detach: ".
func Detach(ctx context.Context, index int, force bool) error {
	err := detach(ctx, index, force)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	return nil
}

func detach(ctx context.Context, index int, force bool) error {
	var (
		sys nbddev.Sysfs
		dir RunDir
		dev = nbddev.Path(index)
	)
	if where, ok := mountedAt(sys, index); ok && !force {
		return fmt.Errorf("%s is mounted on %s: unmount it first (or --force)", dev, where)
	}
	st, stErr := dir.State(index)
	if stErr != nil && !sys.InUse(index) {
		return fmt.Errorf("%s is not attached", dev)
	}
	if err := flush(dev); err != nil {
		return err
	}
	if err := dir.RequestStop(index); err != nil {
		return err
	}
	if err := disconnect(index, st.Interface); err != nil {
		return err
	}
	if stErr != nil || !Alive(st.Pid) {
		dir.CancelStop(index)
		return nil
	}
	_ = unix.Kill(st.Pid, SigDetach)
	err := poll.For(ctx, detachWait, 10*time.Millisecond, func() (bool, error) { return !Alive(st.Pid), nil })
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s is disconnected, but its keeper (pid %d) did not exit", dev, st.Pid)
	}
	return err
}

// flush writes the device's dirty cache out and has the server make it
// durable (fsync of a block device sends NBD_CMD_FLUSH).
func flush(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		// A read-only device has nothing to flush.
		if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) {
			return nil
		}
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", dev, err)
	}
	return unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
}

// disconnect stops the device through iface (netlink first when unknown).
func disconnect(index int, iface config.Interface) error {
	if iface != config.InterfaceIoctl {
		nl, err := netlink.Dial()
		if err == nil {
			defer nl.Close()
			err = nl.Disconnect(index)
		}
		if err == nil || iface == config.InterfaceNetlink {
			return err
		}
	}
	d, err := ioctl.Open(index)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Disconnect()
}

// mountedAt reports where /dev/nbdN or one of its partitions is mounted.
func mountedAt(sys nbddev.Sysfs, index int) (string, bool) {
	devs := map[string]bool{}
	for _, d := range sys.DevNumbers(index) {
		devs[d] = true
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && devs[fields[2]] {
			return fields[4], true
		}
	}
	return "", false
}
