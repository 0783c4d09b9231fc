// Package nbddev holds the facts about the kernel's NBD block devices that
// every other package needs: the device path and index range, the
// logical-block-size rule, where sysfs publishes a device's state, and the
// queries built on it (connected, live, free).
//
// It owns no process state and makes no ioctl or netlink call; ioctl and
// netlink drive the devices, config validates a spec against these rules,
// and keeper and cmd/nbdroot read the state. It imports only the standard
// library.
package nbddev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// MaxIndex bounds N in /dev/nbdN as a spec may name it: the driver's minors
// are 20 bits wide with partitions taking some, and no lab needs more.
const MaxIndex = 65535

// MinBlockSize is the smallest logical block size the block layer accepts.
const MinBlockSize = 512

// MaxBlockSize is the largest logical block size the block layer accepts:
// the page size (Linux 6.1's blk_validate_block_size).
func MaxBlockSize() int64 { return int64(os.Getpagesize()) }

// CheckBlockSize reports whether bs is a logical block size the kernel
// accepts: a power of two from MinBlockSize to MaxBlockSize. Its error is
// the rule in words, for callers to prefix with the input's name. It takes
// a signed size so that a negative input is named as it was given.
func CheckBlockSize(bs int64) error {
	if bs < MinBlockSize || bs > MaxBlockSize() || bs&(bs-1) != 0 {
		return fmt.Errorf("%d is not a power of two between %d and %d", bs, MinBlockSize, MaxBlockSize())
	}
	return nil
}

// Path is the device node of /dev/nbdN.
func Path(index int) string { return "/dev/nbd" + strconv.Itoa(index) }

// Name is the kernel's name of device N ("nbdN"), as in /sys/block.
func Name(index int) string { return "nbd" + strconv.Itoa(index) }

// Sysfs reads the devices' state where the kernel publishes it,
// ROOT/block/nbdN. The zero value reads /sys; tests point Root at a fake
// tree.
type Sysfs struct {
	// Root is the sysfs mount point; empty means /sys.
	Root string
}

// Dir returns /sys/block/nbdN, the directory of device N.
func (s Sysfs) Dir(index int) string { return filepath.Join(s.block(), Name(index)) }

// Queue reads a numeric request-queue attribute of device N
// (/sys/block/nbdN/queue/NAME, such as max_hw_sectors_kb).
func (s Sysfs) Queue(index int, name string) (uint64, error) {
	return readUint(filepath.Join(s.Dir(index), "queue", name))
}

// SetQueue writes a numeric request-queue attribute of device N.
func (s Sysfs) SetQueue(index int, name string, v uint64) error {
	return os.WriteFile(filepath.Join(s.Dir(index), "queue", name), []byte(strconv.FormatUint(v, 10)), 0o644)
}

func (s Sysfs) block() string {
	if s.Root == "" {
		return "/sys/block"
	}
	return filepath.Join(s.Root, "block")
}

// InUse reports whether /dev/nbdN is connected: the kernel creates the
// "pid" attribute when the device starts and removes it when it stops.
func (s Sysfs) InUse(index int) bool {
	_, err := os.Stat(filepath.Join(s.Dir(index), "pid"))
	return err == nil
}

// Live reports whether /dev/nbdN is connected and has its size: the kernel
// starts the device (InUse) a moment before it sets the capacity, and a
// reader in between sees an empty disk.
func (s Sysfs) Live(index int) bool {
	if !s.InUse(index) {
		return false
	}
	n, err := readUint(filepath.Join(s.Dir(index), "size"))
	return err == nil && n > 0
}

// Devices lists the indexes of the nbd devices the kernel has created, in
// ascending order.
func (s Sysfs) Devices() ([]int, error) {
	ents, err := os.ReadDir(s.block())
	if err != nil {
		return nil, err
	}
	var idx []int
	for _, e := range ents {
		if n, ok := strings.CutPrefix(e.Name(), "nbd"); ok {
			if i, err := strconv.Atoi(n); err == nil {
				idx = append(idx, i)
			}
		}
	}
	slices.Sort(idx)
	return idx, nil
}

// Attached lists the devices that are connected (InUse), in ascending order.
func (s Sysfs) Attached() ([]int, error) {
	all, err := s.Devices()
	return slices.DeleteFunc(all, func(i int) bool { return !s.InUse(i) }), err
}

// FirstFree returns the lowest-numbered nbd device that is not connected.
func (s Sysfs) FirstFree() (int, error) {
	idx, err := s.Devices()
	if err != nil {
		return 0, err
	}
	for _, i := range idx {
		if !s.InUse(i) {
			return i, nil
		}
	}
	if len(idx) == 0 {
		return 0, errors.New("no nbd devices (is the nbd module loaded?)")
	}
	return 0, fmt.Errorf("all %d nbd devices are in use", len(idx))
}

// DevNumbers returns the "MAJOR:MINOR" numbers of device N and of its
// partitions, as /proc/self/mountinfo names mounted devices.
func (s Sysfs) DevNumbers(index int) []string {
	files, _ := filepath.Glob(filepath.Join(s.Dir(index), Name(index)+"*", "dev"))
	var out []string
	for _, f := range append([]string{filepath.Join(s.Dir(index), "dev")}, files...) {
		if b, err := os.ReadFile(f); err == nil {
			out = append(out, strings.TrimSpace(string(b)))
		}
	}
	return out
}

// readUint reads a sysfs attribute holding one unsigned number.
func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}
