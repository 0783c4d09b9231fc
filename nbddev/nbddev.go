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
	"fmt"
	"os"
	"strconv"
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
