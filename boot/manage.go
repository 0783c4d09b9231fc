package boot

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/ioctl"
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
	idx, err := ioctl.Devices()
	if err != nil {
		return nil, err
	}
	var out []DeviceStatus
	for _, i := range idx {
		st, err := readState(i)
		switch {
		case err == nil:
			out = append(out, DeviceStatus{State: st, Connected: ioctl.Live(i), KeeperAlive: alive(st.Pid), Managed: true})
		case ioctl.InUse(i):
			out = append(out, DeviceStatus{State: State{Device: ioctl.Path(i), Index: i}, Connected: ioctl.Live(i)})
		}
	}
	return out, nil
}

func readState(index int) (State, error) {
	var st State
	b, err := os.ReadFile(StatePath(index))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", StatePath(index), err)
	}
	return st, nil
}

// alive reports whether pid is a running keeper: not a zombie waiting for
// its parent (an exited keeper whose parent is an init that does not reap),
// and not another process that reused the pid.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil || !strings.HasPrefix(string(cmdline), KeeperName+"\x00") {
		return false
	}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}

// Detach disconnects /dev/nbdN cleanly: it refuses a device that is mounted
// unless force, flushes the device's cache to the server, tells the keeper
// the disconnect is wanted, disconnects through the interface the device was
// attached with, and waits for the keeper to exit.
func Detach(index int, force bool) error {
	dev := ioctl.Path(index)
	if where, ok := mountedAt(index); ok && !force {
		return fmt.Errorf("detach: %s is mounted on %s: unmount it first (or --force)", dev, where)
	}
	st, stErr := readState(index)
	if stErr != nil && !ioctl.InUse(index) {
		return fmt.Errorf("detach: %s is not attached", dev)
	}
	if err := flush(dev); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if err := os.WriteFile(stopPath(index), nil, 0o644); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if err := disconnect(index, st.Interface); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if stErr != nil || !alive(st.Pid) {
		_ = os.Remove(stopPath(index))
		return nil
	}
	_ = unix.Kill(st.Pid, SigDetach)
	for deadline := time.Now().Add(10 * time.Second); alive(st.Pid); {
		if time.Now().After(deadline) {
			return fmt.Errorf("detach: %s is disconnected, but its keeper (pid %d) did not exit", dev, st.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
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
func mountedAt(index int) (string, bool) {
	devs := map[string]bool{}
	base := filepath.Join("/sys/block", "nbd"+strconv.Itoa(index))
	files, _ := filepath.Glob(filepath.Join(base, "nbd*", "dev"))
	for _, f := range append(files, filepath.Join(base, "dev")) {
		if b, err := os.ReadFile(f); err == nil {
			devs[strings.TrimSpace(string(b))] = true
		}
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
