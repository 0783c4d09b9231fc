package network

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Lease is the root's network configuration as Up installed it and Keep
// keeps it. It is JSON so that PID 1 can hand it to the keeper.
type Lease struct {
	// Interface is the link the root's server is reached through; empty
	// when the network mode is "none".
	Interface string `json:"interface,omitempty"`
	// Index is the link's index, which stays while names may not.
	Index int `json:"index,omitempty"`
	// HardwareAddr is the link's MAC address, also the chaddr of every
	// DHCP message.
	HardwareAddr string `json:"hwaddr,omitempty"`
	// Address is the configured address with its prefix.
	Address netip.Prefix `json:"address,omitzero"`
	// Gateway is the default route's next hop, if any.
	Gateway netip.Addr `json:"gateway,omitzero"`
	// Routes are the other routes (DHCP option 121, classless static
	// routes) through the link.
	Routes []Route `json:"routes,omitempty"`
	// DNS are the name servers written to resolv.conf.
	DNS []netip.Addr `json:"dns,omitempty"`
	// Domain is the DNS search domain (DHCP option 15).
	Domain string `json:"domain,omitempty"`
	// Hostname is the hostname given to the kernel, if any.
	Hostname string `json:"hostname,omitempty"`
	// MTU is the link MTU the DHCP server asked for (option 26); 0 if none.
	MTU int `json:"mtu,omitempty"`

	// DHCP is set when the address is leased, not static.
	DHCP bool `json:"dhcp,omitempty"`
	// DHCPServer is the server identifier (option 54).
	DHCPServer netip.Addr `json:"dhcp_server,omitzero"`
	// Acquired is when the server acknowledged the lease.
	Acquired time.Time `json:"acquired,omitzero"`
	// LeaseTime, T1 and T2 are the lease's duration and its renewal and
	// rebinding times, counted from Acquired (T1 and T2 default as RFC
	// 2131 says: half and seven eighths of the lease).
	LeaseTime time.Duration `json:"lease_time,omitempty"`
	T1        time.Duration `json:"t1,omitempty"`
	T2        time.Duration `json:"t2,omitempty"`
	// ClientID is the client identifier (option 61) sent, or empty when
	// the hardware address alone identified the client.
	ClientID []byte `json:"client_id,omitempty"`
	// RootPath is DHCP option 17, if the server sent one.
	RootPath string `json:"root_path,omitempty"`
}

// Route is one route of a lease: to Dst through Gateway, or on the link
// when Gateway is not set.
type Route struct {
	Dst     netip.Prefix `json:"dst"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
}

// Expires is when the lease runs out; the zero time for a static address.
func (l *Lease) Expires() time.Time {
	if !l.DHCP || l.LeaseTime == 0 {
		return time.Time{}
	}
	return l.Acquired.Add(l.LeaseTime)
}

// Summary is the one-line description the network step logs, such as
// "eth0 10.0.2.15/24 from DHCP server 10.0.2.2".
func (l *Lease) Summary() string {
	if l.DHCP {
		return fmt.Sprintf("%s %s from DHCP server %s", l.Interface, l.Address, l.DHCPServer)
	}
	gw := "no gateway"
	if l.Gateway.IsValid() {
		gw = "via " + l.Gateway.String()
	}
	return fmt.Sprintf("%s %s static, %s", l.Interface, l.Address, gw)
}

// infinite is a lease time that never runs out (RFC 2131's 0xffffffff).
const infinite = time.Duration(0xffffffff) * time.Second

// leaseFromACK fills in l's DHCP part from the server's ACK, keeping the
// link fields l already has.
func leaseFromACK(l *Lease, ack *dhcpv4.DHCPv4, at time.Time) error {
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return fmt.Errorf("the ACK carries no address (yiaddr %v)", ack.YourIPAddr)
	}
	bits := 32
	if m := ack.SubnetMask(); m != nil {
		if ones, size := net.IPMask(m).Size(); size == 32 {
			bits = ones
		}
	}
	l.DHCP = true
	l.Address = netip.PrefixFrom(ip, bits)
	l.Acquired = at
	l.Gateway, l.Routes = netip.Addr{}, nil
	if rs := ack.ClasslessStaticRoute(); len(rs) > 0 {
		// RFC 3442: with classless static routes, the router option is
		// ignored; a default route is among them if there is one.
		for _, r := range rs {
			dst, ok1 := netip.AddrFromSlice(r.Dest.IP.To4())
			ones, _ := r.Dest.Mask.Size()
			gw, ok2 := netip.AddrFromSlice(r.Router.To4())
			if !ok1 {
				continue
			}
			if !ok2 || gw.IsUnspecified() {
				gw = netip.Addr{}
			}
			if ones == 0 {
				l.Gateway = gw
				continue
			}
			l.Routes = append(l.Routes, Route{Dst: netip.PrefixFrom(dst, ones).Masked(), Gateway: gw})
		}
	} else if rs := ack.Router(); len(rs) > 0 {
		if gw, ok := netip.AddrFromSlice(rs[0].To4()); ok {
			l.Gateway = gw
		}
	}
	l.DNS = nil
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok {
			l.DNS = append(l.DNS, a)
		}
	}
	l.Domain = ack.DomainName()
	l.Hostname = ack.HostName()
	l.MTU = 0
	if v := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(v) == 2 {
		l.MTU = int(v[0])<<8 | int(v[1])
	}
	l.DHCPServer = netip.Addr{}
	for _, ip := range []net.IP{ack.ServerIdentifier(), ack.ServerIPAddr} {
		if s, ok := netip.AddrFromSlice(ip.To4()); ok && !s.IsUnspecified() {
			l.DHCPServer = s
			break
		}
	}
	l.LeaseTime = ack.IPAddressLeaseTime(infinite)
	l.T1 = ack.IPAddressRenewalTime(l.LeaseTime / 2)
	l.T2 = ack.IPAddressRebindingTime(l.LeaseTime / 8 * 7)
	if l.T1 <= 0 || l.T1 > l.LeaseTime {
		l.T1 = l.LeaseTime / 2
	}
	if l.T2 <= l.T1 || l.T2 > l.LeaseTime {
		l.T2 = l.LeaseTime / 8 * 7
	}
	if rp := ack.RootPath(); rp != "" {
		l.RootPath = rp
	}
	return nil
}
