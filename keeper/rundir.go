package keeper

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/poll"
	"github.com/nbdroot/nbdroot/ioctl"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/netlink"
	"golang.org/x/sys/unix"
)

// DefaultRunDir is nbdroot's directory on /run, which follows PID 1 into
// the real root: the keepers' files, and the boot's retry request and
// overlay layers.
const DefaultRunDir = "/run/nbdroot"

// RunDir is the run-directory protocol between a keeper and the commands
// that manage it. For /dev/nbdN it holds
//
//	nbdN.json  the keeper's State, replaced atomically on every change
//	nbdN.pid   the keeper's pid, written when it starts
//	nbdN.stop  made by Detach before it disconnects, so that the keeper
//	           takes the disconnect for a request, not a lost connection
//
// The zero value is DefaultRunDir.
type RunDir struct {
	// Path is the directory; empty means DefaultRunDir.
	Path string
}

// State is what a keeper publishes about its device, for `nbdroot status`
// and `nbdroot detach`. The JSON names are a stable interface.
type State struct {
	Device      string           `json:"device"`
	Index       int              `json:"index"`
	Server      string           `json:"server"`
	Export      string           `json:"export"`
	Size        uint64           `json:"size"`
	BlockSize   uint32           `json:"block_size"`
	Interface   config.Interface `json:"interface"`
	Connections int              `json:"connections"`
	TLS         bool             `json:"tls"`
	Pid         int              `json:"keeper_pid"`
	Reconnects  int              `json:"reconnects"`
	Since       time.Time        `json:"since"`
}

func (r RunDir) dir() string { return cmp.Or(r.Path, DefaultRunDir) }

// file is nbdN.ext in the directory.
func (r RunDir) file(index int, ext string) string {
	return filepath.Join(r.dir(), nbddev.Name(index)+"."+ext)
}

// Claim is a starting keeper's entry for /dev/nbdN: its pid, and no stale
// stop request.
func (r RunDir) Claim(index, pid int) {
	if err := os.MkdirAll(r.dir(), 0o755); err == nil {
		_ = os.WriteFile(r.file(index, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644)
	}
	_ = os.Remove(r.file(index, "stop"))
}

// Release removes every file of /dev/nbdN: its keeper is gone.
func (r RunDir) Release(index int) {
	for _, ext := range []string{"json", "pid", "stop"} {
		_ = os.Remove(r.file(index, ext))
	}
}

// Publish replaces the state file of st.Index atomically.
func (r RunDir) Publish(st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := r.file(st.Index, "json")
	if err := os.WriteFile(path+".tmp", append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// State reads the state a keeper published for /dev/nbdN.
func (r RunDir) State(index int) (State, error) {
	var st State
	path := r.file(index, "json")
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// RequestStop tells the keeper of /dev/nbdN that the disconnect about to
// come is wanted.
func (r RunDir) RequestStop(index int) error {
	if err := os.MkdirAll(r.dir(), 0o755); err != nil {
		return err
	}
	return os.WriteFile(r.file(index, "stop"), nil, 0o644)
}

// StopRequested reports whether RequestStop was called for /dev/nbdN.
func (r RunDir) StopRequested(index int) bool {
	_, err := os.Stat(r.file(index, "stop"))
	return err == nil
}

// CancelStop withdraws a stop request that no keeper will see.
func (r RunDir) CancelStop(index int) { _ = os.Remove(r.file(index, "stop")) }

// Alive reports whether pid is a running keeper: not a zombie waiting for
// its parent (an exited keeper whose parent is an init that does not reap),
// and not another process that reused the pid.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil || !(strings.HasPrefix(string(cmdline), Name+"\x00") || strings.HasPrefix(string(cmdline), RuntimeName+"\x00")) {
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
	if err := detach(ctx, index, force); err != nil {
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
