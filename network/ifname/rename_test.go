package ifname

import (
	"context"
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestRenameAllInNetns renames real links over rtnetlink in a network
// namespace of its own: a veth pair, described by a fake sysfs as a virtio
// NIC in slot 3 (down: renamed to ens3) and an e1000 in slot 5 (up: the
// kernel would refuse, so it is left as it is and reported).
func TestRenameAllInNetns(t *testing.T) {
	f := newFakeSys(t)
	f.i440fxSlots()
	f.pci("pci0000:00/0000:00:03.0", pciOpts{})
	f.virtioNet("eth0", "pci0000:00/0000:00:03.0", netOpts{ifindex: 3})
	f.pci("pci0000:00/0000:00:05.0", pciOpts{})
	f.link("eth1", "pci0000:00/0000:00:05.0", netOpts{ifindex: 2})
	f.link("lo", "virtual", netOpts{ifindex: 1, iftype: 772, assign: "2", flags: "0x9"})

	done := make(chan struct{})
	go func() {
		defer close(done)
		// This thread moves to a new network namespace and is never
		// unlocked: it ends with the goroutine instead of returning to
		// the runtime's pool.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			if os.Getenv("CI") != "" {
				t.Errorf("unshare(CLONE_NEWNET): %v: this test needs root", err)
			} else {
				t.Logf("SKIP: unshare(CLONE_NEWNET): %v: this test needs root", err)
			}
			return
		}
		renameInNetns(t, f)
	}()
	<-done
}

func renameInNetns(t *testing.T, f *fakeSys) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Errorf("creating a veth pair: %v", err)
		return
	}
	eth0, err0 := netlink.LinkByName("eth0")
	eth1, err1 := netlink.LinkByName("eth1")
	if err := errors.Join(err0, err1); err != nil {
		t.Error(err)
		return
	}
	if err := netlink.LinkSetUp(eth1); err != nil {
		t.Errorf("setting eth1 up: %v", err)
		return
	}
	// The premise: the kernel refuses to rename a link that is up.
	if err := netlink.LinkSetName(eth1, "upname"); err != nil {
		t.Logf("renaming an up link: %v (as expected)", err)
	} else {
		t.Logf("this kernel renamed an up link; Linux 6.1 answers EBUSY")
		if err := netlink.LinkSetName(eth1, "eth1"); err != nil {
			t.Errorf("renaming it back: %v", err)
			return
		}
	}

	renames, err := RenameAll(context.Background(), f.opts())
	want := []Rename{{Index: eth0.Attrs().Index, Old: "eth0", New: "ens3"}}
	if len(renames) != 1 || renames[0] != want[0] {
		t.Errorf("RenameAll renamed %+v, want %+v", renames, want)
	}
	var le *LinkError
	if !errors.Is(err, ErrLinkUp) || !errors.As(err, &le) || le.Link != "eth1" || le.New != "ens5" {
		t.Errorf("RenameAll: want a *LinkError for eth1 → ens5 wrapping ErrLinkUp, got %v", err)
	}
	if l, err := netlink.LinkByIndex(eth0.Attrs().Index); err != nil || l.Attrs().Name != "ens3" {
		t.Errorf("link %d after RenameAll: %v, %v; want it called ens3", eth0.Attrs().Index, l, err)
	}
	if l, err := netlink.LinkByIndex(eth1.Attrs().Index); err != nil || l.Attrs().Name != "eth1" {
		t.Errorf("link %d after RenameAll: %v, %v; want it still called eth1", eth1.Attrs().Index, l, err)
	}

	names := NewNames(renames)
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{{"eth0", "ens3", true}, {"ens3", "ens3", true}, {"eth1", "eth1", false}, {"eth9", "eth9", false}} {
		if got, ok := names.Resolve(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("Resolve(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestRenameAllCancelled(t *testing.T) {
	f := newFakeSys(t)
	f.link("veth0", "virtual", netOpts{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	renames, err := RenameAll(ctx, f.opts())
	if len(renames) != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("RenameAll with a cancelled context = %v, %v; want nothing and context.Canceled", renames, err)
	}
}
