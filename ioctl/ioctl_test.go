package ioctl

import (
	"os"
	"testing"

	"github.com/nbdroot/nbdroot/nbddev"
)

// TestRequestNumbers pins the ioctl numbers to include/uapi/linux/nbd.h:
// _IO(0xab, n) is 0xab00|n on the generic ioctl architectures.
func TestRequestNumbers(t *testing.T) {
	io := func(n uintptr) uintptr { return 0xab<<8 | n }
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"NBD_SET_SOCK", nbdSetSock, io(0)},
		{"NBD_SET_BLKSIZE", nbdSetBlksize, io(1)},
		{"NBD_SET_SIZE", nbdSetSize, io(2)},
		{"NBD_DO_IT", nbdDoIt, io(3)},
		{"NBD_CLEAR_SOCK", nbdClearSock, io(4)},
		{"NBD_CLEAR_QUE", nbdClearQue, io(5)},
		{"NBD_SET_SIZE_BLOCKS", nbdSetSizeBlocks, io(7)},
		{"NBD_DISCONNECT", nbdDisconnect, io(8)},
		{"NBD_SET_TIMEOUT", nbdSetTimeout, io(9)},
		{"NBD_SET_FLAGS", nbdSetFlags, io(10)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestValidBlockSize(t *testing.T) {
	page := uint32(os.Getpagesize())
	for _, tc := range []struct {
		bs uint32
		ok bool
	}{
		{512, true}, {1024, true}, {2048, true}, {page, true},
		{0, false}, {256, false}, {768, false}, {3000, false}, {2 * page, false},
	} {
		if err := nbddev.CheckBlockSize(int64(tc.bs)); (err == nil) != tc.ok {
			t.Errorf("validBlockSize(%d) = %v, want ok=%v", tc.bs, err, tc.ok)
		}
	}
}

func TestPath(t *testing.T) {
	if got := nbddev.Path(12); got != "/dev/nbd12" {
		t.Errorf("Path(12) = %q", got)
	}
}
