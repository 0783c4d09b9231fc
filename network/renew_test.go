package network

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/network/rtnl"
)

const labLeasesEnv = "NBDROOT_NETWORK_LAB_LEASES" // dnsmasq's lease file, for the child

// TestRenewerLab keeps a lease from dnsmasq, whose T1 and T2 are set to
// seconds (the lease itself is dnsmasq's minimum of 2 minutes): RENEW at
// T1 to the server, REBIND at T2 when the server does not answer unicast,
// and a new DISCOVER after a NAK, always with the same client identifier.
func TestRenewerLab(t *testing.T) {
	if !inLabChild() {
		if testing.Short() {
			t.Skip("-short: the renewal test waits for T1 and T2, 12 s")
		}
		l := newLab(t, "2m", "--no-ping", "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6")
		l.child(t, 2*time.Minute, labLeasesEnv+"="+l.leases)
		log := l.dnsmasqLog(t)
		nak := strings.Index(log, "DHCPNAK")
		if nak < 0 || !strings.Contains(log[nak:], "DHCPDISCOVER") {
			t.Errorf("dnsmasq's log has no DISCOVER after a NAK:\n%s", log)
		}
		return
	}
	mac, err := net.ParseMAC(labMAC)
	if err != nil {
		t.Fatal(err)
	}
	cid := append([]byte{1}, mac...)
	log := testLog(t)
	n := config.Network{Mode: config.NetworkDHCP, Interfaces: []string{labClient}, LinkTimeout: 5 * time.Second, DHCPTimeout: 20 * time.Second}
	lease, err := Up(context.Background(), log, n, Options{Root: t.TempDir(), ClientID: cid})
	if err != nil {
		t.Fatal(err)
	}
	if lease.T1 != 3*time.Second || lease.T2 != 6*time.Second || lease.LeaseTime != 2*time.Minute {
		t.Fatalf("lease times %v/%v/%v, want 3s/6s/2m0s", lease.T1, lease.T2, lease.LeaseTime)
	}

	// keep runs a Renewer on l until it reported want leases or the
	// deadline, and returns them with the time each came.
	type renewal struct {
		at    time.Time
		lease *Lease
	}
	keep := func(l *Lease, want int, deadline time.Duration) []renewal {
		var mu sync.Mutex
		var got []renewal
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		r := NewRenewer(log, l, func(nl *Lease) {
			mu.Lock()
			defer mu.Unlock()
			if got = append(got, renewal{time.Now(), nl}); len(got) == want {
				cancel()
			}
		})
		_ = r.Run(ctx)
		mu.Lock()
		defer mu.Unlock()
		return got
	}

	t.Run("renew at T1", func(t *testing.T) {
		got := keep(lease, 2, 15*time.Second)
		if len(got) != 2 {
			t.Fatalf("%d renewals in 15s, want 2", len(got))
		}
		prev := lease
		for i, r := range got {
			due := prev.Acquired.Add(prev.T1)
			if d := r.at.Sub(due); d < 0 || d > time.Second {
				t.Errorf("renewal %d came %v after T1, want within 1s", i+1, d)
			}
			if r.lease.Address != lease.Address || r.lease.DHCPServer != lease.DHCPServer {
				t.Errorf("renewal %d: %v from %v, want %v from %v", i+1, r.lease.Address, r.lease.DHCPServer, lease.Address, lease.DHCPServer)
			}
			prev = r.lease
		}
		lease = prev
		checkLeaseFile(t, lease, cid)
	})

	t.Run("rebind at T2", func(t *testing.T) {
		l := *lease
		l.DHCPServer = netip.MustParseAddr("10.77.0.9") // no server there: RENEW goes unanswered
		l.Acquired = time.Now()
		got := keep(&l, 1, 15*time.Second)
		if len(got) != 1 {
			t.Fatalf("no lease by REBIND in 15s")
		}
		if d := got[0].at.Sub(l.Acquired.Add(l.T2)); d < 0 || d > 1500*time.Millisecond {
			t.Errorf("rebound %v after T2, want within 1.5s", d)
		}
		if got[0].lease.Address != lease.Address || got[0].lease.DHCPServer != netip.MustParseAddr(labServer) {
			t.Errorf("rebound %v from %v, want %v from %s", got[0].lease.Address, got[0].lease.DHCPServer, lease.Address, labServer)
		}
		lease = got[0].lease
		checkLeaseFile(t, lease, cid)
	})

	t.Run("NAK", func(t *testing.T) {
		link, err := rtnl.LinkByIndex(lease.Index)
		if err != nil {
			t.Fatal(err)
		}
		l := *lease
		l.Address = netip.MustParsePrefix("10.77.0.200/24") // outside dnsmasq's range
		l.Acquired = time.Now().Add(-l.T1)
		rc := &rtnl.Conn{}
		defer rc.Close()
		if err := install(rc, link, &l, nil); err != nil {
			t.Fatal(err)
		}
		got := keep(&l, 1, 15*time.Second)
		if len(got) != 1 {
			t.Fatalf("no new lease after the NAK in 15s")
		}
		nl := got[0].lease
		if !netip.MustParsePrefix("10.77.0.0/24").Contains(nl.Address.Addr()) || nl.Address == l.Address {
			t.Errorf("after the NAK: %v, want an address of dnsmasq's range", nl.Address)
		}
		addrs, _ := rtnl.Addrs(link.Index)
		if len(addrs) != 1 || addrs[0].Prefix != nl.Address {
			t.Errorf("addresses on the link after the NAK: %v, want just %v", addrs, nl.Address)
		}
		checkLeaseFile(t, nl, cid)
	})
}

// checkLeaseFile checks that dnsmasq's lease file has l's address for the
// lab's MAC address and cid.
func checkLeaseFile(t *testing.T, l *Lease, cid []byte) {
	t.Helper()
	b, err := os.ReadFile(os.Getenv(labLeasesEnv))
	if err != nil {
		t.Fatal(err)
	}
	hexID := []string{"*"} // dnsmasq's "none"
	if len(cid) > 0 {
		hexID = nil
	}
	for _, c := range cid {
		hexID = append(hexID, hex.EncodeToString([]byte{c}))
	}
	want := labMAC + " " + l.Address.Addr().String()
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, want) {
			if !strings.HasSuffix(line, " "+strings.Join(hexID, ":")) {
				t.Errorf("dnsmasq's lease of %s has another client id: %q, want %s", want, line, strings.Join(hexID, ":"))
			}
			return
		}
	}
	t.Errorf("dnsmasq's lease file has no lease %s:\n%s", want, b)
}

// TestKeepReleaseLab does what ifdown does with ISC dhclient: release the
// lease at the server (DHCPRELEASE), flush the address, set the link down.
// Keep must restore all of it and take the lease back at the server.
func TestKeepReleaseLab(t *testing.T) {
	if !inLabChild() {
		l := newLab(t, "2m", "--no-ping")
		l.child(t, time.Minute, labLeasesEnv+"="+l.leases)
		log := l.dnsmasqLog(t)
		rel := strings.Index(log, "DHCPRELEASE")
		if rel < 0 || !strings.Contains(log[rel:], "DHCPACK") {
			t.Errorf("dnsmasq's log has no ACK after the release:\n%s", log)
		}
		return
	}
	var logBuf testrig.SyncBuffer
	log := bootlog.New(io.MultiWriter(&logBuf, testWriter{t}), time.Now())
	log.SetDebug(true)
	n := config.Network{Mode: config.NetworkDHCP, Interfaces: []string{labClient}, LinkTimeout: 5 * time.Second, DHCPTimeout: 20 * time.Second}
	lease, err := Up(context.Background(), log, n, Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan *Lease, 4)
	done := make(chan error)
	go func() { done <- Keep(ctx, log, lease, KeepOptions{OnChange: func(l *Lease) { changed <- l }}) }()
	time.Sleep(100 * time.Millisecond)

	release(t, lease)
	b, _ := os.ReadFile(os.Getenv(labLeasesEnv))
	if strings.Contains(string(b), lease.Address.Addr().String()) {
		// dnsmasq rewrites its lease file at once.
		t.Fatalf("the release did not free the lease:\n%s", b)
	}
	run(t, "ip", "addr", "flush", "dev", labClient)
	run(t, "ip", "link", "set", labClient, "down")
	selStart := time.Now()
	select {
	case nl := <-changed:
		if nl.Address != lease.Address {
			t.Errorf("after the release: %v, want %v again", nl.Address, lease.Address)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no lease within 10s of the release (select started %v, now %v)\n%s", selStart, time.Now(), logBuf.String())
	}
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		bad := rootState(t, lease)
		if bad == "" {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("after the release: %s", bad)
		}
	}
	checkLeaseFile(t, lease, nil)
	cancel()
	<-done
	t.Logf("log:\n%s", logBuf.String())
}

// release sends DHCPRELEASE for l to its server, as dhclient -r does.
func release(t *testing.T, l *Lease) {
	t.Helper()
	c, err := newClient(testLog(t), l)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.unicast(l)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithHwAddr(c.hw),
		dhcpv4.WithClientIP(l.Address.Addr().AsSlice()), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(l.DHCPServer.AsSlice())))
	if err != nil {
		t.Fatal(err)
	}
	// No reply comes to a release: send it and wait a moment for none.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if reply, err := conn.SendAndRead(ctx, conn.RemoteAddr(), msg, nil); err == nil {
		t.Fatalf("a reply to DHCPRELEASE: %v", reply)
	}
}

// TestRenewerMonotonic checks that a lease that came through JSON (wall
// clock only) is timed on the monotonic clock, immune to the root's NTP
// stepping the clock.
func TestRenewerMonotonic(t *testing.T) {
	acquired := time.Now().Add(-time.Minute)
	b, err := MarshalLease(&Lease{Interface: "eth0", DHCP: true, Acquired: acquired, LeaseTime: time.Hour, T1: 30 * time.Minute, T2: 50 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	l, err := UnmarshalLease(b)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(l.Acquired.String(), "m=") {
		t.Fatal("a time from JSON has a monotonic reading; the test proves nothing")
	}
	got := NewRenewer(testLog(t), l, nil).Lease().Acquired
	if !strings.Contains(got.String(), "m=") {
		t.Errorf("the renewer's lease time %v has no monotonic reading", got)
	}
	if d := got.Sub(acquired); d < -time.Second || d > time.Second {
		t.Errorf("the renewer's lease time is %v off", d)
	}
}
