package boot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
)

// Lease is what the network step learned that later steps need.
type Lease struct {
	// Interface is the link the server is reached through.
	Interface string
	// Address is the configured address with its prefix.
	Address string
	// DHCPServer is the DHCP server's address (DHCP mode only).
	DHCPServer net.IP
	// RootPath is DHCP option 17, if the server sent one.
	RootPath string
}

// BringUpNetwork configures the network as n says and returns the lease.
func BringUpNetwork(ctx context.Context, log *bootlog.Logger, n config.Network) (*Lease, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	if n.Mode == config.NetworkNone {
		return &Lease{}, nil
	}
	links, err := candidateLinks(n.Interfaces)
	if err != nil {
		return nil, err
	}
	if n.Hostname != "" {
		if err := os.WriteFile("/proc/sys/kernel/hostname", []byte(n.Hostname), 0o644); err != nil {
			log.Errorf("network", "set hostname %q: %v", n.Hostname, err)
		}
	}
	switch n.Mode {
	case config.NetworkStatic:
		return configureStatic(log, n, links)
	case config.NetworkDHCP:
		return configureDHCP(ctx, log, n, links)
	}
	return nil, fmt.Errorf("unknown mode %q", n.Mode)
}

// candidateLinks returns the links to configure: the named ones, or every
// non-loopback link in kernel order.
func candidateLinks(names []string) ([]netlink.Link, error) {
	all, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range all {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Name == "lo" {
			continue
		}
		if len(names) > 0 && !slices.Contains(names, a.Name) {
			continue
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		var have []string
		for _, l := range all {
			have = append(have, l.Attrs().Name)
		}
		if len(names) > 0 {
			return nil, fmt.Errorf("no interface named %s (have: %s)", strings.Join(names, ", "), strings.Join(have, ", "))
		}
		return nil, fmt.Errorf("no network interface besides loopback (have: %s); is the NIC driver in the initramfs?", strings.Join(have, ", "))
	}
	return out, nil
}

// waitCarrier sets l up and waits until it has carrier (IFF_LOWER_UP).
// Not until operstate says "up": the kernel's linkwatch reports that up to a
// second later, while the device transmits from the moment it is opened
// with carrier.
func waitCarrier(l netlink.Link, timeout time.Duration) error {
	name := l.Attrs().Name
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: set up: %w", name, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		cur, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no carrier after %v (is the cable plugged in?)", name, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func configureStatic(log *bootlog.Logger, n config.Network, links []netlink.Link) (*Lease, error) {
	l := links[0]
	name := l.Attrs().Name
	if err := waitCarrier(l, n.LinkTimeout); err != nil {
		return nil, err
	}
	ipnet := &net.IPNet{IP: n.Address.Addr().AsSlice(), Mask: net.CIDRMask(n.Address.Bits(), n.Address.Addr().BitLen())}
	if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipnet}); err != nil {
		return nil, fmt.Errorf("%s: add address %s: %w", name, n.Address, err)
	}
	if n.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: n.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("%s: default route via %s: %w", name, n.Gateway, err)
		}
	}
	var dns []net.IP
	for _, d := range n.DNS {
		dns = append(dns, d.AsSlice())
	}
	if err := writeResolvConf(dns); err != nil {
		return nil, err
	}
	gw := "no gateway"
	if n.Gateway.IsValid() {
		gw = "via " + n.Gateway.String()
	}
	log.Printf("network", "%s %s static, %s", name, n.Address, gw)
	return &Lease{Interface: name, Address: n.Address.String()}, nil
}

// configureDHCP asks for a DHCPv4 lease on every candidate link at once and
// configures the first link that gets one.
func configureDHCP(ctx context.Context, log *bootlog.Logger, n config.Network, links []netlink.Link) (*Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, n.LinkTimeout+n.DHCPTimeout)
	defer cancel()
	type result struct {
		link netlink.Link
		ack  *dhcpv4.DHCPv4
		err  error
	}
	results := make(chan result, len(links))
	for _, l := range links {
		go func() {
			ack, err := dhcpLease(ctx, l, n)
			results <- result{l, ack, err}
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
		name := r.link.Attrs().Name
		p4 := dhclient.NewPacket4(r.link, r.ack)
		if err := p4.Configure(); err != nil {
			return nil, fmt.Errorf("%s: configure lease: %w", name, err)
		}
		ns, _, _ := p4.GatherDNSSettings()
		if err := writeResolvConf(ns); err != nil {
			return nil, err
		}
		lease := &Lease{
			Interface:  name,
			Address:    p4.Lease().String(),
			DHCPServer: r.ack.ServerIdentifier(),
			RootPath:   r.ack.RootPath(),
		}
		if lease.DHCPServer == nil {
			lease.DHCPServer = r.ack.ServerIPAddr
		}
		log.Printf("network", "%s %s from DHCP server %s", name, lease.Address, lease.DHCPServer)
		return lease, nil
	}
	return nil, fmt.Errorf("DHCP failed: %w", errors.Join(errs...))
}

// dhcpLease brings l up and runs DISCOVER/OFFER/REQUEST/ACK on it, asking
// for the root-path option.
func dhcpLease(ctx context.Context, l netlink.Link, n config.Network) (*dhcpv4.DHCPv4, error) {
	name := l.Attrs().Name
	if err := waitCarrier(l, n.LinkTimeout); err != nil {
		return nil, err
	}
	const perTry = 2 * time.Second
	c, err := nclient4.New(name, nclient4.WithTimeout(perTry), nclient4.WithRetry(int(n.DHCPTimeout/perTry)+1))
	if err != nil {
		return nil, fmt.Errorf("%s: DHCP client: %w", name, err)
	}
	defer c.Close()
	lease, err := c.Request(ctx, dhcpv4.WithRequestedOptions(dhcpv4.OptionRootPath))
	if err != nil {
		return nil, fmt.Errorf("%s: DHCP: %w", name, err)
	}
	return lease.ACK, nil
}

// writeResolvConf writes /etc/resolv.conf for the name lookups of the
// connect step. No servers is not an error: IP literals need none.
func writeResolvConf(ns []net.IP) error {
	if len(ns) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("# written by nbdroot\n")
	for _, s := range ns {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if err := os.MkdirAll("/etc", 0o755); err != nil {
		return err
	}
	if err := os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}
