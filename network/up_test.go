package network

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/network/rtnl"
)

// upReport is what the client part of TestUpDHCPLab found.
type upReport struct {
	Lease    *Lease
	Took     time.Duration
	Hostname string
	MTU      int
	Addrs    []string
	Routes   string // ip route's
}

// TestUpDHCPLab takes a lease from dnsmasq on a veth in a network
// namespace, as PID 1 does at boot, and checks that everything the server
// sent is applied, and that the first offer was taken at once.
//
// dnsmasq, by default, pings an address before it offers it to a new
// client and waits 3 s for an answer (PING_WAIT), blocking all DHCP
// meanwhile: that, not the client, was the 3 s network step seen on a
// bridged lab. With no-ping the offer comes at once and is taken; with the
// default, it is taken as soon as it arrives, with no wait for a
// retransmission.
func TestUpDHCPLab(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		min, max time.Duration // how long the network step may take
	}{
		{"no-ping", []string{"--no-ping"}, 0, time.Second},
		{"ping", nil, 2500 * time.Millisecond, 4500 * time.Millisecond}, // slack for a loaded machine
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.min > 0 && !inLabChild() {
				t.Skipf("-short: dnsmasq's ping takes %v", tc.min)
			}
			testUpDHCPLab(t, tc.args, tc.min, tc.max)
		})
	}
}

func testUpDHCPLab(t *testing.T, dnsmasqArgs []string, minTook, maxTook time.Duration) {
	if inLabChild() {
		n := config.Network{Mode: config.NetworkDHCP, Interfaces: []string{labClient}, LinkTimeout: 5 * time.Second, DHCPTimeout: 20 * time.Second}
		start := time.Now()
		lease, err := Up(context.Background(), testLog(t), n, Options{Root: labReport()})
		if err != nil {
			t.Fatal(err)
		}
		rep := upReport{Lease: lease, Took: time.Since(start)}
		h, _ := os.ReadFile("/proc/sys/kernel/hostname")
		rep.Hostname = strings.TrimSpace(string(h))
		link, err := rtnl.LinkByName(labClient)
		if err != nil {
			t.Fatal(err)
		}
		rep.MTU = link.MTU
		addrs, _ := rtnl.Addrs(link.Index)
		for _, a := range addrs {
			rep.Addrs = append(rep.Addrs, a.Prefix.String())
			if a.ValidLft != rtnl.Forever {
				t.Errorf("address %s installed with valid lifetime %d, want forever", a.Prefix, a.ValidLft)
			}
		}
		rep.Routes = run(t, "ip", "-4", "route")
		writeJSON(t, filepath.Join(labReport(), "report.json"), rep)
		return
	}
	l := newLab(t, "2m", append([]string{"--dhcp-option=17,10.77.0.1:10809/rootfs", "--dhcp-option=26,1400",
		"--dhcp-option=6,10.77.0.53,10.77.0.54", "--dhcp-option=15,lab.example", "--dhcp-host=" + labMAC + ",labhost",
		"--dhcp-option=121,10.1.0.0/16,10.77.0.254,0.0.0.0/0,10.77.0.1"}, dnsmasqArgs...)...)
	dir := l.child(t, time.Minute)
	var rep upReport
	readJSON(t, filepath.Join(dir, "report.json"), &rep)
	lease := rep.Lease
	if !lease.DHCP || lease.Interface != labClient || lease.HardwareAddr != labMAC {
		t.Errorf("lease %+v: want DHCP on %s (%s)", lease, labClient, labMAC)
	}
	if !netip.MustParsePrefix("10.77.0.0/24").Contains(lease.Address.Addr()) || lease.Address.Bits() != 24 {
		t.Errorf("address %v, want one in 10.77.0.0/24", lease.Address)
	}
	if lease.DHCPServer != netip.MustParseAddr(labServer) {
		t.Errorf("DHCP server %v, want %s", lease.DHCPServer, labServer)
	}
	if lease.RootPath != "10.77.0.1:10809/rootfs" {
		t.Errorf("root-path %q, want 10.77.0.1:10809/rootfs", lease.RootPath)
	}
	if lease.MTU != 1400 || rep.MTU != 1400 {
		t.Errorf("MTU: lease %d, link %d; want 1400 both", lease.MTU, rep.MTU)
	}
	if lease.Hostname != "labhost" || rep.Hostname != "labhost" {
		t.Errorf("hostname: lease %q, kernel %q; want labhost both", lease.Hostname, rep.Hostname)
	}
	if lease.LeaseTime != 2*time.Minute || lease.T1 != time.Minute || lease.T2 != 105*time.Second {
		t.Errorf("lease time %v, T1 %v, T2 %v; want 2m0s, 1m0s, 1m45s", lease.LeaseTime, lease.T1, lease.T2)
	}
	if lease.Gateway != netip.MustParseAddr(labServer) || len(lease.Routes) != 1 || lease.Routes[0] != (Route{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParseAddr("10.77.0.254")}) {
		t.Errorf("gateway %v, routes %v; want 10.77.0.1 and 10.1.0.0/16 via 10.77.0.254 (option 121)", lease.Gateway, lease.Routes)
	}
	for _, want := range []string{"default via 10.77.0.1 dev cl0", "10.1.0.0/16 via 10.77.0.254 dev cl0"} {
		if !strings.Contains(rep.Routes, want) {
			t.Errorf("routes:\n%s\nwant %q", rep.Routes, want)
		}
	}
	if len(rep.Addrs) != 1 || rep.Addrs[0] != lease.Address.String() {
		t.Errorf("addresses on %s: %v, want just %v", labClient, rep.Addrs, lease.Address)
	}
	resolv, err := os.ReadFile(filepath.Join(dir, "etc", "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "# written by nbdroot\nsearch lab.example\nnameserver 10.77.0.53\nnameserver 10.77.0.54\n"; string(resolv) != want {
		t.Errorf("resolv.conf:\n%s\nwant:\n%s", resolv, want)
	}
	if rep.Took < minTook || rep.Took > maxTook {
		t.Errorf("the network took %v, want %v to %v", rep.Took, minTook, maxTook)
	}
	t.Logf("lease in %v: %+v", rep.Took, lease)
	leases, _ := os.ReadFile(l.leases)
	if !strings.Contains(string(leases), labMAC+" "+lease.Address.Addr().String()) {
		t.Errorf("dnsmasq's lease file does not have %s for %s:\n%s", lease.Address.Addr(), labMAC, leases)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// TestUpNoServerLab asks for a lease where no server answers: DISCOVER is
// sent again soon and often (0.25 s, then doubling), and the error names
// the link and the time given.
func TestUpNoServerLab(t *testing.T) {
	if !inLabChild() {
		l := newLab(t, "")
		l.child(t, time.Minute)
		return
	}
	var logBuf testrig.SyncBuffer
	log := bootlog.New(&logBuf, time.Now())
	log.SetDebug(true)
	n := config.Network{Mode: config.NetworkDHCP, Interfaces: []string{labClient}, LinkTimeout: time.Second, DHCPTimeout: 2 * time.Second}
	start := time.Now()
	_, err := Up(context.Background(), log, n, Options{Root: t.TempDir()})
	took := time.Since(start)
	if err == nil || err.Error() != "cl0: DHCP: no lease within 2s" {
		t.Errorf("Up = %v, want cl0: DHCP: no lease within 2s", err)
	}
	if took < 2*time.Second || took > 3*time.Second {
		t.Errorf("Up took %v, want the 2s DHCP timeout (carrier is at once on a veth)", took)
	}
	// Sends at 0, 0.25, 0.75 s, 1.75 s (each wait up to a quarter longer,
	// so the fourth may miss the 2 s).
	if n := strings.Count(logBuf.String(), "msg_type=DISCOVER"); n < 3 {
		t.Errorf("%d DISCOVERs in %v, want at least 3:\n%s", n, took, logBuf.String())
	}
}
