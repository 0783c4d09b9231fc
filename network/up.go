package network

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/poll"
	"github.com/nbdroot/nbdroot/network/ifname"
	"github.com/nbdroot/nbdroot/network/rtnl"
)

// Error is a failure of the network on one link, or of the network as a
// whole when Interface is empty: "eth0: DHCP: no reply after 30s".
type Error struct {
	Interface string // the link, if the failure is one link's
	Op        string // what was being done: "set up", "DHCP", "add address 10.0.2.15/24"
	Err       error
}

func (e *Error) Error() string {
	s := e.Err.Error()
	if e.Op != "" {
		s = e.Op + ": " + s
	}
	if e.Interface != "" {
		s = e.Interface + ": " + s
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Options are Up's seams; the zero value is what PID 1 wants.
type Options struct {
	// Root is the directory /etc/resolv.conf is written under; empty
	// means "/".
	Root string
	// ClientID is the DHCP client identifier (option 61) to send. None
	// (the default) is what the kernel's ipconfig, klibc's and ISC
	// dhclient send: the server then knows the machine by its hardware
	// address alone, as the same machine in the initramfs and in the root.
	ClientID []byte
	// PredictableNames renames the NICs, before any is brought up, to the
	// names the root's udev will give them (package ifname: systemd's
	// default scheme), so that the root's configuration for "ens3" finds
	// the link the initramfs configured. Interfaces named in n may be
	// given by either name.
	PredictableNames bool
}

// predictableNames renames every eligible link to its predictable name and
// returns the wanted interfaces by their current names. A link that cannot
// be renamed keeps its kernel name and is still usable: that is logged, not
// fatal.
func predictableNames(ctx context.Context, log *bootlog.Logger, wanted []string) []string {
	renames, err := ifname.RenameAll(ctx, ifname.Options{})
	for _, r := range renames {
		log.Printf("network", "%s is %s, as the root's udev will name it", r.Old, r.New)
	}
	if err != nil {
		log.Errorf("network", "predictable names: %v", err)
	}
	names := ifname.NewNames(renames)
	out := make([]string, len(wanted))
	for i, w := range wanted {
		out[i], _ = names.Resolve(w) // w itself if no rename involved it
	}
	return out
}

// carrierPoll is how often the carrier bit is checked: a link gets
// carrier within milliseconds of being set up, or after a cable is
// plugged in, and no event is cheaper to wait for in an initramfs.
const carrierPoll = 5 * time.Millisecond

// Up configures the root's network as n says (links up, DHCP or static
// address, routes, MTU, hostname, resolv.conf) and returns the lease. It
// logs one line for the link it configured.
func Up(ctx context.Context, log *bootlog.Logger, n config.Network, o Options) (*Lease, error) {
	// One rtnetlink socket for every request: opening one (socket, bind,
	// options, the poller) per request cost more than the request under
	// emulation.
	c := &rtnl.Conn{}
	defer c.Close()
	if lo, err := c.LinkByName("lo"); err == nil {
		_ = c.SetUp(lo.Index)
	}
	if n.Mode == config.NetworkNone {
		return &Lease{}, nil
	}
	wanted := n.Interfaces
	if o.PredictableNames {
		wanted = predictableNames(ctx, log, wanted)
	}
	links, err := candidateLinks(c, wanted)
	if err != nil {
		return nil, err
	}
	var lease *Lease
	link := links[0]
	switch n.Mode {
	case config.NetworkStatic:
		if err = waitCarrier(ctx, c, link, n.LinkTimeout); err == nil {
			lease = linkLease(link)
			lease.Address, lease.Gateway, lease.DNS = n.Address, n.Gateway, n.DNS
		}
	case config.NetworkDHCP:
		link, lease, err = upDHCP(ctx, log, c, n, links, o.ClientID)
	default:
		return nil, &Error{Err: fmt.Errorf("unknown mode %q", n.Mode)}
	}
	if err != nil {
		return nil, err
	}
	if err := install(c, link, lease, nil); err != nil {
		return nil, err
	}
	lease.Hostname = cmp.Or(n.Hostname, lease.Hostname) // ip= and TOML win over the DHCP server
	if lease.Hostname != "" {
		if err := os.WriteFile("/proc/sys/kernel/hostname", []byte(lease.Hostname), 0o644); err != nil {
			log.Errorf("network", "set hostname %q: %v", lease.Hostname, err)
		}
	}
	if err := writeResolvConf(o.Root, lease); err != nil {
		return nil, err
	}
	log.Printf("network", "%s", lease.Summary())
	return lease, nil
}

// candidateLinks returns the links to configure: the named ones, or every
// non-loopback link in kernel order.
func candidateLinks(c *rtnl.Conn, names []string) ([]rtnl.Link, error) {
	all, err := c.Links()
	if err != nil {
		return nil, &Error{Err: err}
	}
	var out []rtnl.Link
	for _, l := range all {
		if l.Loopback() || l.Name == "lo" {
			continue
		}
		if len(names) > 0 && !slices.Contains(names, l.Name) {
			continue
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		var have []string
		for _, l := range all {
			have = append(have, l.Name)
		}
		if len(names) > 0 {
			return nil, &Error{Err: fmt.Errorf("no interface named %s (have: %s)", strings.Join(names, ", "), strings.Join(have, ", "))}
		}
		return nil, &Error{Err: fmt.Errorf("no network interface besides loopback (have: %s); is the NIC driver in the initramfs?", strings.Join(have, ", "))}
	}
	return out, nil
}

// waitCarrier sets l up and waits until it has carrier (IFF_LOWER_UP).
// Not until operstate says "up": the kernel's linkwatch reports that up to a
// second later, while the device transmits from the moment it is opened
// with carrier.
func waitCarrier(ctx context.Context, c *rtnl.Conn, l rtnl.Link, timeout time.Duration) error {
	name := l.Name
	if err := c.SetUp(l.Index); err != nil {
		return &Error{Interface: name, Err: err}
	}
	err := poll.For(ctx, timeout, carrierPoll, func() (bool, error) {
		cur, err := c.LinkByIndex(l.Index)
		if err != nil {
			return false, &Error{Interface: name, Err: err}
		}
		return cur.Flags&unix.IFF_LOWER_UP != 0, nil
	})
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return &Error{Interface: name, Err: fmt.Errorf("no carrier after %v (is the cable plugged in?)", timeout)}
	}
	return err
}

// linkLease starts a lease for link l: its name, index and MAC address.
func linkLease(l rtnl.Link) *Lease {
	return &Lease{Interface: l.Name, Index: l.Index, HardwareAddr: l.HardwareAddr.String()}
}

// upDHCP asks for a DHCPv4 lease on every candidate link at once and
// returns the first link that gets one, with its lease.
func upDHCP(ctx context.Context, log *bootlog.Logger, c *rtnl.Conn, n config.Network, links []rtnl.Link, cid []byte) (rtnl.Link, *Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, n.LinkTimeout+n.DHCPTimeout)
	defer cancel()
	type result struct {
		link  rtnl.Link
		lease *Lease
		err   error
	}
	results := make(chan result, len(links))
	for _, l := range links {
		go func() {
			lease, err := linkDHCP(ctx, log, c, n, l, cid)
			results <- result{l, lease, err}
		}()
	}
	var errs []error
	for range links {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		cancel() // the other links' requests
		return r.link, r.lease, nil
	}
	return rtnl.Link{}, nil, errors.Join(errs...) // each names its link
}

// linkDHCP brings l up and acquires a lease on it.
func linkDHCP(ctx context.Context, log *bootlog.Logger, rc *rtnl.Conn, n config.Network, l rtnl.Link, cid []byte) (*Lease, error) {
	if err := waitCarrier(ctx, rc, l, n.LinkTimeout); err != nil {
		return nil, err
	}
	lease := linkLease(l)
	lease.ClientID = cid
	ctx, cancel := context.WithTimeout(ctx, n.DHCPTimeout)
	defer cancel()
	c, err := newClient(log, lease)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.acquire(ctx, lease); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no lease within %v", n.DHCPTimeout)
		}
		return nil, &Error{Interface: lease.Interface, Op: "DHCP", Err: err}
	}
	return lease, nil
}

// install puts lease on l through c: MTU, address (infinite lifetimes, see
// the package doc), default route. old, if set, is an address l had before
// that lease does not keep: it is removed once the new one is in place.
func install(c *rtnl.Conn, l rtnl.Link, lease *Lease, old *netip.Prefix) error {
	name := lease.Interface
	if lease.MTU >= 68 && lease.MTU != l.MTU {
		if err := c.SetMTU(l.Index, lease.MTU); err != nil {
			return &Error{Interface: name, Op: fmt.Sprintf("set MTU %d", lease.MTU), Err: err}
		}
	}
	if err := c.ReplaceAddr(rootAddr(lease)); err != nil {
		return &Error{Interface: name, Op: "add address " + lease.Address.String(), Err: err}
	}
	if old != nil && *old != lease.Address {
		_ = c.DelAddr(rtnl.Addr{Index: l.Index, Prefix: *old})
	}
	for _, r := range extraRoutes(lease) {
		if err := c.ReplaceRoute(r); err != nil {
			return &Error{Interface: name, Op: "route to " + r.Dst.String(), Err: err}
		}
	}
	if r, ok := defaultRoute(lease); ok {
		if err := c.ReplaceRoute(r); err != nil {
			return &Error{Interface: name, Op: "default route via " + lease.Gateway.String(), Err: err}
		}
	}
	return nil
}

// rootAddr is the address as installed: no expiry.
func rootAddr(lease *Lease) rtnl.Addr {
	return rtnl.Addr{Index: lease.Index, Prefix: lease.Address, ValidLft: rtnl.Forever, PreferredLft: rtnl.Forever}
}

// extraRoutes are the lease's routes besides the default route.
func extraRoutes(lease *Lease) []rtnl.Route {
	var out []rtnl.Route
	for _, rt := range lease.Routes {
		r := rtnl.Route{Index: lease.Index, Dst: rt.Dst, Gateway: rt.Gateway}
		if !rt.Gateway.IsValid() {
			r.Scope = unix.RT_SCOPE_LINK
		}
		out = append(out, r)
	}
	return out
}

// defaultRoute is the lease's default route; false without a gateway.
func defaultRoute(lease *Lease) (rtnl.Route, bool) {
	if !lease.Gateway.IsValid() {
		return rtnl.Route{}, false
	}
	return rtnl.Route{Index: lease.Index, Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: lease.Gateway}, true
}

// writeResolvConf writes root/etc/resolv.conf for the name lookups of the
// connect step. No servers is not an error: IP literals need none.
func writeResolvConf(root string, lease *Lease) error {
	if len(lease.DNS) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("# written by nbdroot\n")
	if lease.Domain != "" {
		fmt.Fprintf(&b, "search %s\n", lease.Domain)
	}
	for _, s := range lease.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return writeUnder(cmp.Or(root, "/"), "etc/resolv.conf", b.String(), "write resolv.conf")
}
