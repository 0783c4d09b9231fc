package boot

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestFSFromSuperblock(t *testing.T) {
	with := func(off int, magic string) []byte {
		b := make([]byte, fsProbeSize)
		copy(b[off:], magic)
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"ext4", with(0x438, "\x53\xef"), "ext4"},
		{"xfs", with(0, "XFSB"), "xfs"},
		{"squashfs", with(0, "hsqs"), "squashfs"},
		{"btrfs", with(0x10040, "_BHRfS_M"), "btrfs"},
		{"erofs", with(0x400, "\xe2\xe1\xf5\xe0"), "erofs"},
		{"zeroes", make([]byte, fsProbeSize), ""},
		{"short", []byte("XFS"), ""},
		{"empty", nil, ""},
		{"ext magic truncated", with(0, "")[:0x439], ""},
	} {
		if got := fsFromSuperblock(tc.b); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestMountOptions(t *testing.T) {
	for _, tc := range []struct {
		in    string
		flags uintptr
		data  string
	}{
		{"", 0, ""},
		{"noatime", unix.MS_NOATIME, ""},
		{"noatime,errors=remount-ro", unix.MS_NOATIME, "errors=remount-ro"},
		{"data=journal,nodev,nosuid", unix.MS_NODEV | unix.MS_NOSUID, "data=journal"},
		{"noatime,atime", 0, ""},
		{"ro,rw,defaults", 0, ""},
		{"discard,,commit=30", 0, "discard,commit=30"},
		{"lazytime,sync,dirsync,noexec", unix.MS_LAZYTIME | unix.MS_SYNCHRONOUS | unix.MS_DIRSYNC | unix.MS_NOEXEC, ""},
	} {
		flags, data := mountOptions(tc.in)
		if flags != tc.flags || data != tc.data {
			t.Errorf("mountOptions(%q) = %#x, %q; want %#x, %q", tc.in, flags, data, tc.flags, tc.data)
		}
	}
}
