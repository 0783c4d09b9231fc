package boot

import "testing"

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
