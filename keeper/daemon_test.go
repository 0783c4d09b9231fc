package keeper

import (
	"testing"

	"golang.org/x/sys/unix"
)

func thpDisabled(t *testing.T) int {
	t.Helper()
	v, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0)
	if err != nil {
		t.Skipf("PR_GET_THP_DISABLE: %v (kernel before 3.15?)", err)
	}
	return v
}

// TestWithoutTHP checks that the keeper is forked with transparent huge
// pages off, and that the starter gets back the setting it had.
func TestWithoutTHP(t *testing.T) {
	for _, before := range []int{0, 1} {
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, uintptr(before), 0, 0, 0); err != nil {
			t.Skipf("PR_SET_THP_DISABLE: %v", err)
		}
		during := -1
		if err := withoutTHP(func() error { during = thpDisabled(t); return nil }); err != nil {
			t.Fatal(err)
		}
		if during != 1 {
			t.Errorf("before %d: THP disable during the start = %d, want 1", before, during)
		}
		if after := thpDisabled(t); after != before {
			t.Errorf("THP disable after the start = %d, want %d as before", after, before)
		}
	}
	_ = unix.Prctl(unix.PR_SET_THP_DISABLE, 0, 0, 0, 0)
}
