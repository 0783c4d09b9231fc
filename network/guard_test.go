package network

import (
	"context"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/network/rtnl"
)

// TestGuardLab attacks the root link the way ifdown, dhclient -r and
// network services do, and checks that the Guard restores each thing
// within a second, logs each kind of restoration once, and leaves another
// link alone.
func TestGuardLab(t *testing.T) {
	if !inLabChild() {
		l := newLab(t, "")
		l.child(t, time.Minute)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := config.Network{Mode: config.NetworkStatic, Interfaces: []string{labClient}, LinkTimeout: 5 * time.Second,
		Address: netip.MustParsePrefix("10.77.0.20/24"), Gateway: netip.MustParseAddr(labServer)}
	var logBuf testrig.SyncBuffer
	log := bootlog.New(&logBuf, time.Now())
	lease, err := Up(ctx, log, n, Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// A route of DHCP option 121, as Up would have installed it.
	lease.Routes = []Route{{Dst: netip.MustParsePrefix("10.1.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.254")}}
	link, err := rtnl.LinkByIndex(lease.Index)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rtnl.Conn{}
	defer rc.Close()
	if err := install(rc, link, lease, nil); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	run(t, "ip", "addr", "add", "192.0.2.5/24", "dev", "other0")
	run(t, "ip", "link", "set", "other0", "up")
	done := make(chan error)
	go func() { done <- Keep(ctx, log, lease, KeepOptions{}) }()
	time.Sleep(100 * time.Millisecond) // subscribed

	attacks := []struct {
		name string
		cmds [][]string
	}{
		{"addr flush", [][]string{{"ip", "addr", "flush", "dev", labClient}}},
		{"link down", [][]string{{"ip", "link", "set", labClient, "down"}}},
		{"route del", [][]string{{"ip", "route", "del", "default"}}},
		{"option 121 route del", [][]string{{"ip", "route", "del", "10.1.0.0/16"}}},
		{"finite lifetime", [][]string{{"ip", "addr", "change", "10.77.0.20/24", "dev", labClient, "valid_lft", "30", "preferred_lft", "30"}}},
		{"ifdown", [][]string{{"ip", "addr", "flush", "dev", labClient}, {"ip", "link", "set", labClient, "down"}}},
		{"addr flush again", [][]string{{"ip", "addr", "flush", "dev", labClient}}},
	}
	for _, a := range attacks {
		for _, c := range a.cmds {
			// ip's flush lists and deletes the addresses for up to 10
			// rounds until none is left; a guard that restores the
			// address within a round makes it give up, which is the
			// guard winning, not a failed attack.
			out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "Flush remains incomplete") {
				t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
			}
		}
		start := time.Now()
		for {
			bad := rootState(t, lease)
			if bad == "" {
				t.Logf("%s: restored in %v", a.name, time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Since(start) > time.Second {
				t.Fatalf("%s: not restored after 1s: %s\n%s", a.name, bad, logBuf.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if out := run(t, "ip", "-4", "addr", "show", "dev", "other0"); !strings.Contains(out, "192.0.2.5/24") {
		t.Errorf("other0 lost its address:\n%s", out)
	}
	run(t, "ip", "addr", "del", "192.0.2.5/24", "dev", "other0")
	time.Sleep(time.Second) // the deletion's event brings a sweep within milliseconds
	if out := run(t, "ip", "-4", "addr", "show", "dev", "other0"); strings.Contains(out, "192.0.2.5") {
		t.Errorf("the guard put back an address of another link:\n%s", out)
	}
	logged := logBuf.String()
	for _, want := range []string{"10.77.0.20/24 was removed; restored it", "was set down; set it up again", "the default route via 10.77.0.1 was removed; restored it", "lifetime of 30s; made it permanent", "the route to 10.1.0.0/16 was removed; restored it"} {
		if n := strings.Count(logged, want); n != 1 {
			t.Errorf("%q logged %d times, want once (rate-limited)\n%s", want, n, logged)
		}
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Keep = %v, want context.Canceled", err)
	}
	t.Logf("log:\n%s", logged)
}

// rootState says what is wrong with the root link, or "" if nothing.
func rootState(t *testing.T, l *Lease) string {
	link, err := rtnl.LinkByIndex(l.Index)
	if err != nil {
		return err.Error()
	}
	if !link.Up() {
		return "link down"
	}
	addrs, _ := rtnl.Addrs(link.Index)
	found := false
	for _, a := range addrs {
		if a.Prefix == l.Address {
			found = true
			if a.ValidLft != rtnl.Forever {
				return "address lifetime finite"
			}
		}
	}
	if !found {
		return "no address"
	}
	out, _ := exec.Command("ip", "-4", "route", "show", "default").CombinedOutput()
	if !strings.Contains(string(out), "via "+l.Gateway.String()) {
		return "no default route"
	}
	for _, r := range l.Routes {
		out, _ := exec.Command("ip", "-4", "route", "show", r.Dst.String()).CombinedOutput()
		if !strings.Contains(string(out), "via "+r.Gateway.String()) {
			return "no route to " + r.Dst.String()
		}
	}
	return ""
}

// TestGuardSweepGarbage measures what a sweep leaves on the heap, on one
// Conn as the keeper's guard sweeps: in a keeper whose heap holds 0.2 MiB,
// that garbage is what brings the next collection and the heap's growth
// until then. It was 14 KiB a sweep on package netlink's Execute, and 2.6
// KiB since the Conn reuses its buffers (the decoded records, and package
// netlink's attribute decoder); the bound catches a return of the former.
func TestGuardSweepGarbage(t *testing.T) {
	if !inLabChild() {
		l := newLab(t, "")
		l.child(t, time.Minute)
		return
	}
	n := config.Network{Mode: config.NetworkStatic, Interfaces: []string{labClient}, LinkTimeout: 5 * time.Second,
		Address: netip.MustParsePrefix("10.77.0.20/24"), Gateway: netip.MustParseAddr(labServer)}
	log := bootlog.New(t.Output(), time.Now())
	lease, err := Up(context.Background(), log, n, Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(log, func() *Lease { return lease }, nil)
	defer g.closeConn()
	g.Sweep() // opens the Conn
	const sweeps, bound = 100, 4 << 10
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range sweeps {
		g.Sweep()
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / sweeps
	t.Logf("a sweep allocates %d bytes in %d objects", per, (after.Mallocs-before.Mallocs)/sweeps)
	if per > bound {
		t.Errorf("a sweep allocates %d bytes, more than %d", per, bound)
	}
}
