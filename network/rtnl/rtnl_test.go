package rtnl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netnsEnv is set in the child process that TestLive runs in a network
// namespace of its own.
const netnsEnv = "NBDROOT_RTNL_TEST_NETNS"

// TestLive exercises every request against the kernel. The test runs
// itself again under `unshare --net`, as a child in a fresh network
// namespace where only lo exists: a Go process has many threads, and
// unshare(CLONE_NEWNET) would move only one of them.
func TestLive(t *testing.T) {
	if os.Getenv(netnsEnv) != "" {
		live(t)
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to create a network namespace and a veth pair")
		}
		t.Skip("needs root to create a network namespace and a veth pair")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a new network namespace: %v\n%s", err, out)
	}
	t.Logf("in a new network namespace:\n%s", out)
}

// live is TestLive in its namespace.
func live(t *testing.T) {
	links, err := Links()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Name != "lo" {
		t.Fatalf("not in a fresh network namespace (links %v): refusing to touch them", links)
	}
	if !links[0].Loopback() || links[0].Up() {
		t.Errorf("lo: Loopback %v Up %v, want true false", links[0].Loopback(), links[0].Up())
	}
	ip(t, "link", "add", "a0", "type", "veth", "peer", "name", "a1")

	// Links and the lookups agree with each other and with ip.
	links, err = Links()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	byName := map[string]Link{}
	for _, l := range links {
		names = append(names, l.Name)
		byName[l.Name] = l
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a0", "a1", "lo"}) {
		t.Fatalf("Links: %v, want a0, a1, lo", names)
	}
	compareLinks(t, links)
	a0, a1 := byName["a0"], byName["a1"]
	for _, get := range []func() (Link, error){
		func() (Link, error) { return LinkByName("a0") },
		func() (Link, error) { return LinkByIndex(a0.Index) },
	} {
		if l, err := get(); err != nil || !reflect.DeepEqual(l, a0) {
			t.Errorf("lookup: %+v, %v; want %+v", l, err, a0)
		}
	}

	// Renaming while down, and back.
	if err := SetName(a0.Index, "b0"); err != nil {
		t.Fatal(err)
	}
	if l, err := LinkByIndex(a0.Index); err != nil || l.Name != "b0" {
		t.Errorf("after SetName b0: %+v, %v", l, err)
	}
	if _, err := LinkByName("a0"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByName(a0) after the rename: %v, want ENODEV", err)
	}
	if err := SetName(a0.Index, "a0"); err != nil {
		t.Fatal(err)
	}
	err = SetName(a0.Index, "a1")
	var rerr *Error
	if !errors.Is(err, unix.EEXIST) || !errors.As(err, &rerr) || rerr.Op != "set name a1" || rerr.Link != indexName(a0.Index) {
		t.Errorf("SetName to a1's name: %#v, want an *Error for EEXIST naming the request and the link", err)
	}
	t.Logf("SetName to a1's name: %v", err)

	if err := SetMTU(a0.Index, 1400); err != nil {
		t.Fatal(err)
	}
	if l, err := LinkByIndex(a0.Index); err != nil || l.MTU != 1400 {
		t.Errorf("after SetMTU 1400: %+v, %v", l, err)
	}

	// Up; a link that is up cannot be renamed.
	for _, l := range []Link{a0, a1, byName["lo"]} {
		if err := SetUp(l.Index); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := LinkByIndex(a0.Index); err != nil || !l.Up() {
		t.Errorf("after SetUp: %+v, %v", l, err)
	}
	// Linux 6.2 and later rename a link that is up; earlier ones refuse.
	switch err := SetName(a0.Index, "b0"); {
	case err == nil:
		t.Log("SetName while up: renamed (Linux 6.2+)")
		if err := SetName(a0.Index, "a0"); err != nil {
			t.Fatal(err)
		}
	case errors.Is(err, unix.EBUSY):
		t.Logf("SetName while up: %v", err)
	default:
		t.Errorf("SetName while up: %v, want success or EBUSY", err)
	}
	links, err = Links()
	if err != nil {
		t.Fatal(err)
	}
	compareLinks(t, links)

	// Addresses.
	addr := Addr{Index: a0.Index, Prefix: netip.MustParsePrefix("10.9.0.2/24")}
	permanent := addr
	permanent.ValidLft, permanent.PreferredLft = Forever, Forever
	for range 2 { // replacing what is there is no error
		if err := ReplaceAddr(addr); err != nil {
			t.Fatal(err)
		}
	}
	wantAddrs(t, a0.Index, permanent)
	wantAddrs(t, a1.Index)
	compareAddrs(t, "a0", permanent)

	lapsing := addr
	lapsing.ValidLft = 30
	if err := ReplaceAddr(lapsing); err != nil {
		t.Fatal(err)
	}
	got, err := Addrs(a0.Index)
	if err != nil || len(got) != 1 || got[0].Prefix != addr.Prefix ||
		got[0].ValidLft > 30 || got[0].ValidLft < 25 || got[0].PreferredLft > got[0].ValidLft {
		t.Errorf("after ReplaceAddr with ValidLft 30: %+v, %v", got, err)
	}
	compareAddrs(t, "a0", got...)
	// The guard makes a lapsing address permanent again.
	if err := ReplaceAddr(addr); err != nil {
		t.Fatal(err)
	}
	wantAddrs(t, a0.Index, permanent)

	other := Addr{Index: a0.Index, Prefix: netip.MustParsePrefix("10.9.1.2/24"), ValidLft: 60, PreferredLft: 50}
	if err := ReplaceAddr(other); err != nil {
		t.Fatal(err)
	}
	if err := DelAddr(other); err != nil {
		t.Fatal(err)
	}
	wantAddrs(t, a0.Index, permanent)
	if err := DelAddr(other); !errors.Is(err, unix.EADDRNOTAVAIL) {
		t.Errorf("DelAddr of a missing address: %v, want EADDRNOTAVAIL", err)
	}

	// Routes: a gateway needs carrier, which a veth has once both ends are up.
	waitCarrier(t, a0.Index)
	def := Route{Index: a0.Index, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.9.0.1")}
	onLink := Route{Index: a0.Index, Dst: netip.MustParsePrefix("10.10.0.0/16"), Scope: unix.RT_SCOPE_LINK}
	for range 2 {
		for _, r := range []Route{def, onLink} {
			if err := ReplaceRoute(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	routes, err := Routes(unix.RT_TABLE_MAIN)
	if err != nil {
		t.Fatal(err)
	}
	prefixRoute := Route{Index: a0.Index, Dst: netip.MustParsePrefix("10.9.0.0/24"), Scope: unix.RT_SCOPE_LINK}
	def.Table, onLink.Table, prefixRoute.Table = unix.RT_TABLE_MAIN, unix.RT_TABLE_MAIN, unix.RT_TABLE_MAIN
	for _, want := range []Route{def, onLink, prefixRoute} {
		if !slices.Contains(routes, want) {
			t.Errorf("Routes(main) = %+v, without %+v", routes, want)
		}
	}
	compareRoutes(t, routes)
	if local, err := Routes(unix.RT_TABLE_LOCAL); err != nil || len(local) != 0 {
		t.Errorf("Routes(local) = %+v, %v; want none (local and broadcast routes are left out)", local, err)
	}
	if routes0, err := Routes(0); err != nil || !reflect.DeepEqual(routes0, routes) {
		t.Errorf("Routes(0) = %+v, %v; want Routes(main) %+v", routes0, err, routes)
	}
	unreachable := Route{Index: a0.Index, Dst: netip.MustParsePrefix("10.20.0.0/16"), Gateway: netip.MustParseAddr("10.30.0.1")}
	if err := ReplaceRoute(unreachable); !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("ReplaceRoute via an unreachable gateway: %v, want ENETUNREACH", err)
	} else {
		t.Logf("ReplaceRoute via an unreachable gateway: %v", err)
	}

	connSweeps(t, a0, def)
	manyAddrs(t, a1.Index)
	subscription(t, a1.Index)

	if err := DelAddr(addr); err != nil {
		t.Fatal(err)
	}
	wantAddrs(t, a0.Index)

	// A link that is gone.
	ip(t, "link", "del", "a0")
	_, err = LinkByIndex(a0.Index)
	if !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByIndex of a deleted link: %v, want ENODEV", err)
	}
	t.Logf("LinkByIndex of a deleted link: %v", err)
	if _, err := LinkByName("a0"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByName of a deleted link: %v, want ENODEV", err)
	}
	if err := SetUp(a0.Index); !errors.Is(err, unix.ENODEV) {
		t.Errorf("SetUp of a deleted link: %v, want ENODEV", err)
	}
}

// ip runs ip with args and returns its output.
func ip(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ipJSON runs ip -j with args and decodes its output into v.
func ipJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := ip(t, append([]string{"-j"}, args...)...)
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("ip -j %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// compareLinks compares links with what ip reports.
func compareLinks(t *testing.T, links []Link) {
	t.Helper()
	var ipLinks []struct {
		Index   int      `json:"ifindex"`
		Name    string   `json:"ifname"`
		Flags   []string `json:"flags"`
		MTU     int      `json:"mtu"`
		Address string   `json:"address"`
	}
	ipJSON(t, &ipLinks, "link", "show")
	if len(ipLinks) != len(links) {
		t.Fatalf("Links: %d links, ip: %d", len(links), len(ipLinks))
	}
	for i, l := range links {
		want := ipLinks[i]
		if l.Index != want.Index || l.Name != want.Name || l.MTU != want.MTU || l.HardwareAddr.String() != want.Address ||
			l.Up() != slices.Contains(want.Flags, "UP") || l.Loopback() != slices.Contains(want.Flags, "LOOPBACK") ||
			(l.Flags&unix.IFF_LOWER_UP != 0) != slices.Contains(want.Flags, "LOWER_UP") {
			t.Errorf("Links[%d] = %+v, ip: %+v", i, l, want)
		}
	}
}

// wantAddrs checks the IPv4 addresses of the link with the index.
func wantAddrs(t *testing.T, index int, want ...Addr) {
	t.Helper()
	got, err := Addrs(index)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
		t.Errorf("Addrs(%d) = %+v, want %+v", index, got, want)
	}
}

// compareAddrs compares the addresses of link with what ip reports.
func compareAddrs(t *testing.T, link string, addrs ...Addr) {
	t.Helper()
	var ipAddrs []struct {
		Info []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
			Broadcast string `json:"broadcast"`
			Valid     uint32 `json:"valid_life_time"`
			Preferred uint32 `json:"preferred_life_time"`
		} `json:"addr_info"`
	}
	ipJSON(t, &ipAddrs, "-4", "addr", "show", "dev", link)
	if len(ipAddrs) != 1 || len(ipAddrs[0].Info) != len(addrs) {
		t.Fatalf("ip: %+v, Addrs: %+v", ipAddrs, addrs)
	}
	for i, a := range addrs {
		want := ipAddrs[0].Info[i]
		if a.Prefix.Addr().String() != want.Local || a.Prefix.Bits() != want.PrefixLen ||
			want.Broadcast != "10.9.0.255" ||
			!closeLft(a.ValidLft, want.Valid) || !closeLft(a.PreferredLft, want.Preferred) {
			t.Errorf("Addrs[%d] = %+v, ip: %+v", i, a, want)
		}
	}
}

// closeLft reports whether lifetime a, read before b, is b or a second more.
func closeLft(a, b uint32) bool { return a == b || uint64(a) == uint64(b)+1 }

// compareRoutes compares the main table's routes with what ip reports.
func compareRoutes(t *testing.T, routes []Route) {
	t.Helper()
	var ipRoutes []struct {
		Dst     string `json:"dst"`
		Gateway string `json:"gateway"`
		Scope   string `json:"scope"`
	}
	ipJSON(t, &ipRoutes, "-4", "route", "show", "table", "main")
	if len(ipRoutes) != len(routes) {
		t.Fatalf("Routes: %+v, ip: %+v", routes, ipRoutes)
	}
	for i, r := range routes {
		want := ipRoutes[i]
		dst := r.Dst.String()
		if r.Dst.Bits() == 0 {
			dst = "default"
		} else if r.Dst.IsSingleIP() {
			dst = r.Dst.Addr().String()
		}
		gw := ""
		if r.Gateway.IsValid() {
			gw = r.Gateway.String()
		}
		scope := "global"
		if r.Scope == unix.RT_SCOPE_LINK {
			scope = "link"
		}
		if dst != want.Dst || gw != want.Gateway || (want.Scope != "" && scope != want.Scope) {
			t.Errorf("Routes[%d] = %+v, ip: %+v", i, r, want)
		}
	}
}

// waitCarrier waits for the link with the index to have carrier.
func waitCarrier(t *testing.T, index int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := LinkByIndex(index)
		if err != nil {
			t.Fatal(err)
		}
		if l.Flags&unix.IFF_LOWER_UP != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no carrier within 5s", l.Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connSweeps makes the guard's requests on one Conn, as it does every few
// seconds, in every order and with refusals between them: each answer must
// be the one asked for, not a leftover of the request before (a get
// answered with an acknowledgement after the object once left one).
func connSweeps(t *testing.T, link Link, def Route) {
	t.Helper()
	c, err := Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := Addr{Index: link.Index, Prefix: netip.MustParsePrefix("10.9.0.2/24")}
	for i := range 3 {
		if l, err := c.LinkByIndex(link.Index); err != nil || l.Name != link.Name {
			t.Fatalf("sweep %d: LinkByIndex: %+v, %v", i, l, err)
		}
		if l, err := c.LinkByName(link.Name); err != nil || l.Index != link.Index {
			t.Fatalf("sweep %d: LinkByName: %+v, %v", i, l, err)
		}
		if err := c.SetUp(link.Index); err != nil {
			t.Fatalf("sweep %d: SetUp: %v", i, err)
		}
		if got, err := c.Addrs(link.Index); err != nil || len(got) != 1 || got[0].Prefix != addr.Prefix {
			t.Fatalf("sweep %d: Addrs: %+v, %v", i, got, err)
		}
		if err := c.ReplaceAddr(addr); err != nil {
			t.Fatalf("sweep %d: ReplaceAddr: %v", i, err)
		}
		if _, err := c.LinkByName("nosuch0"); !errors.Is(err, unix.ENODEV) {
			t.Fatalf("sweep %d: LinkByName of no link: %v, want ENODEV", i, err)
		}
		if routes, err := c.Routes(unix.RT_TABLE_MAIN); err != nil || !slices.Contains(routes, def) {
			t.Fatalf("sweep %d: Routes: %+v, %v; want %+v among them", i, routes, err, def)
		}
		if err := c.ReplaceRoute(def); err != nil {
			t.Fatalf("sweep %d: ReplaceRoute: %v", i, err)
		}
		if links, err := c.Links(); err != nil || len(links) != 3 {
			t.Fatalf("sweep %d: Links: %+v, %v", i, links, err)
		}
	}
}

// manyAddrs checks a dump the kernel answers in many datagrams: 600
// addresses on the link (about 48 KiB of messages, while a datagram holds
// at most the 16 KiB of a Conn's buffer), twice on one Conn.
func manyAddrs(t *testing.T, index int) {
	const n = 600
	var batch strings.Builder
	for i := range n {
		fmt.Fprintf(&batch, "addr add 10.40.%d.%d/32 dev a1\n", i/200, i%200+1)
	}
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch: %v\n%s", err, out)
	}
	c, err := Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 2 { // the second on a socket that has read the first
		got, err := c.Addrs(index)
		if err != nil || len(got) != n {
			t.Fatalf("Addrs of a link with %d addresses: %d of them, %v", n, len(got), err)
		}
	}
	ip(t, "addr", "flush", "dev", "a1")
	if got, err := c.Addrs(index); err != nil || len(got) != 0 {
		t.Errorf("Addrs after the flush: %d, %v; want none", len(got), err)
	}
}

// subscription checks that a Subscription wakes at a change of the link,
// and that Close ends a Wait.
func subscription(t *testing.T, index int) {
	sub, err := Subscribe(unix.RTMGRP_LINK)
	if err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() { woke <- sub.Wait() }()
	if err := SetMTU(index, 1400); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return within 10 s of an MTU change")
	}
	go func() { woke <- sub.Wait() }()
	time.Sleep(50 * time.Millisecond)
	sub.Close()
	select {
	case err := <-woke:
		if err == nil {
			t.Error("Wait on a closed Subscription returned no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end Wait within 10 s")
	}
}
