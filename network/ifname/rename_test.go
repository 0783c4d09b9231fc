package ifname

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/nbdroot/nbdroot/network/rtnl"
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
	if out, err := exec.Command("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1").CombinedOutput(); err != nil {
		t.Errorf("creating a veth pair: %v %s", err, out)
		return
	}
	eth0, err0 := rtnl.LinkByName("eth0")
	eth1, err1 := rtnl.LinkByName("eth1")
	if err := errors.Join(err0, err1); err != nil {
		t.Error(err)
		return
	}
	if err := rtnl.SetUp(eth1.Index); err != nil {
		t.Errorf("setting eth1 up: %v", err)
		return
	}
	// The premise: the kernel refuses to rename a link that is up.
	if err := rtnl.SetName(eth1.Index, "upname"); err != nil {
		t.Logf("renaming an up link: %v (as expected)", err)
	} else {
		t.Logf("this kernel renamed an up link; Linux 6.1 answers EBUSY")
		if err := rtnl.SetName(eth1.Index, "eth1"); err != nil {
			t.Errorf("renaming it back: %v", err)
			return
		}
	}

	renames, err := RenameAll(context.Background(), f.opts())
	want := []Rename{{Index: eth0.Index, Old: "eth0", New: "ens3"}}
	if len(renames) != 1 || renames[0] != want[0] {
		t.Errorf("RenameAll renamed %+v, want %+v", renames, want)
	}
	var le *LinkError
	if !errors.Is(err, ErrLinkUp) || !errors.As(err, &le) || le.Link != "eth1" || le.New != "ens5" {
		t.Errorf("RenameAll: want a *LinkError for eth1 → ens5 wrapping ErrLinkUp, got %v", err)
	}
	if l, err := rtnl.LinkByIndex(eth0.Index); err != nil || l.Name != "ens3" {
		t.Errorf("link %d after RenameAll: %+v, %v; want it called ens3", eth0.Index, l, err)
	}
	if l, err := rtnl.LinkByIndex(eth1.Index); err != nil || l.Name != "eth1" {
		t.Errorf("link %d after RenameAll: %+v, %v; want it still called eth1", eth1.Index, l, err)
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
