package rtnl

import (
	"bytes"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The expected bytes below are derived by hand from the kernel's structs
// and constants (include/uapi/linux/netlink.h, rtnetlink.h, if_link.h,
// if_addr.h), for a little-endian host:
//
//	nlmsghdr      len u32, type u16, flags u16, seq u32, pid u32
//	ifinfomsg     family u8, pad u8, type u16, index i32, flags u32, change u32
//	ifaddrmsg     family u8, prefixlen u8, flags u8, scope u8, index u32
//	rtmsg         family, dst_len, src_len, tos, table, protocol, scope, type (u8 each), flags u32
//	ifa_cacheinfo prefered u32, valid u32, cstamp u32, tstamp u32
//	nlattr        len u16 (header included, padding not), type u16, data padded to 4
//
// Types: RTM_NEWLINK 0x10, RTM_GETLINK 0x12, RTM_NEWADDR 0x14,
// RTM_DELADDR 0x15, RTM_GETADDR 0x16, RTM_NEWROUTE 0x18, RTM_GETROUTE 0x1a.
// Flags: NLM_F_REQUEST|NLM_F_ACK 0x0005, NLM_F_REQUEST|NLM_F_DUMP 0x0301,
// NLM_F_REQUEST|NLM_F_ACK|NLM_F_REPLACE|NLM_F_CREATE 0x0505.

// littleEndian skips a test whose expected bytes are written out for a
// little-endian host: rtnetlink integers are in host byte order.
func littleEndian(t testing.TB) {
	t.Helper()
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	if b[0] != 1 {
		t.Skip("expected bytes are written for a little-endian host")
	}
}

// unhex decodes hex with spaces and newlines for readability.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

// wire is m as sent by a socket before it fills in seq and pid.
func wire(m netlink.Message) ([]byte, error) {
	m.Header.Length = uint32(16 + len(m.Data))
	return m.MarshalBinary()
}

func TestRequests(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name string
		msg  func() (netlink.Message, error)
		want string
	}{
		{
			name: "list links",
			msg:  listLinksMessage,
			want: `20000000 1200 0103 00000000 00000000` + // RTM_GETLINK, dump
				`00 00 0000 00000000 00000000 00000000`, // ifinfomsg AF_UNSPEC
		},
		{
			name: "link by index",
			msg:  func() (netlink.Message, error) { return getLinkMessage(3, "") },
			want: `20000000 1200 0100 00000000 00000000` + // RTM_GETLINK, request (no ack: the link is the answer)
				`00 00 0000 03000000 00000000 00000000`, // ifi_index 3
		},
		{
			name: "link by name",
			msg:  func() (netlink.Message, error) { return getLinkMessage(0, "eth0") },
			want: `2c000000 1200 0100 00000000 00000000` + // RTM_GETLINK, request
				`00 00 0000 00000000 00000000 00000000` +
				`0900 0300 65746830 00 000000`, // IFLA_IFNAME "eth0\0", padded
		},
		{
			name: "set up",
			msg:  func() (netlink.Message, error) { return setUpMessage(3) },
			want: `20000000 1000 0500 00000000 00000000` + // RTM_NEWLINK
				`00 00 0000 03000000 01000000 01000000`, // ifi_flags = ifi_change = IFF_UP
		},
		{
			name: "set name",
			msg:  func() (netlink.Message, error) { return setNameMessage(3, "b0") },
			want: `28000000 1000 0500 00000000 00000000` +
				`00 00 0000 03000000 00000000 00000000` +
				`0700 0300 623000 00`, // IFLA_IFNAME "b0\0", padded
		},
		{
			name: "set name, 15 bytes",
			msg:  func() (netlink.Message, error) { return setNameMessage(3, "enx525400123456") },
			want: `34000000 1000 0500 00000000 00000000` +
				`00 00 0000 03000000 00000000 00000000` +
				`1400 0300 656e78353235343030313233343536 00`,
		},
		{
			name: "set MTU",
			msg:  func() (netlink.Message, error) { return setMTUMessage(3, 1400) },
			want: `28000000 1000 0500 00000000 00000000` +
				`00 00 0000 03000000 00000000 00000000` +
				`0800 0400 78050000`, // IFLA_MTU 1400
		},
		{
			name: "list addresses",
			msg:  listAddrsMessage,
			want: `18000000 1600 0103 00000000 00000000` + // RTM_GETADDR, dump
				`02 00 00 00 00000000`, // ifaddrmsg AF_INET
		},
		{
			name: "replace address, forever",
			msg: func() (netlink.Message, error) {
				return replaceAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("10.9.0.2/24")})
			},
			want: `44000000 1400 0505 00000000 00000000` + // RTM_NEWADDR, create|replace
				`02 18 00 00 03000000` + // AF_INET /24 on index 3
				`0800 0200 0a090002` + // IFA_LOCAL
				`0800 0100 0a090002` + // IFA_ADDRESS
				`0800 0400 0a0900ff` + // IFA_BROADCAST
				`1400 0600 ffffffff ffffffff 00000000 00000000`, // IFA_CACHEINFO prefered, valid
		},
		{
			name: "replace address, valid 30 s, preferred as valid",
			msg: func() (netlink.Message, error) {
				return replaceAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("192.168.1.20/16"), ValidLft: 30})
			},
			want: `44000000 1400 0505 00000000 00000000` +
				`02 10 00 00 03000000` +
				`0800 0200 c0a80114` +
				`0800 0100 c0a80114` +
				`0800 0400 c0a8ffff` +
				`1400 0600 1e000000 1e000000 00000000 00000000`,
		},
		{
			name: "replace address, valid 60 s, preferred 50 s, /8",
			msg: func() (netlink.Message, error) {
				return replaceAddrMessage(Addr{Index: 7, Prefix: netip.MustParsePrefix("10.1.2.3/8"), ValidLft: 60, PreferredLft: 50})
			},
			want: `44000000 1400 0505 00000000 00000000` +
				`02 08 00 00 07000000` +
				`0800 0200 0a010203` +
				`0800 0100 0a010203` +
				`0800 0400 0affffff` +
				`1400 0600 32000000 3c000000 00000000 00000000`,
		},
		{
			name: "replace address, /31 has no broadcast",
			msg: func() (netlink.Message, error) {
				return replaceAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("10.0.0.1/31")})
			},
			want: `3c000000 1400 0505 00000000 00000000` +
				`02 1f 00 00 03000000` +
				`0800 0200 0a000001` +
				`0800 0100 0a000001` +
				`1400 0600 ffffffff ffffffff 00000000 00000000`,
		},
		{
			name: "replace address, /0 broadcasts to all",
			msg: func() (netlink.Message, error) {
				return replaceAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("10.0.0.1/0")})
			},
			want: `44000000 1400 0505 00000000 00000000` +
				`02 00 00 00 03000000` +
				`0800 0200 0a000001` +
				`0800 0100 0a000001` +
				`0800 0400 ffffffff` +
				`1400 0600 ffffffff ffffffff 00000000 00000000`,
		},
		{
			name: "delete address",
			msg: func() (netlink.Message, error) {
				return delAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("10.9.0.2/24"), ValidLft: 30})
			},
			want: `28000000 1500 0500 00000000 00000000` + // RTM_DELADDR
				`02 18 00 00 03000000` +
				`0800 0200 0a090002` +
				`0800 0100 0a090002`,
		},
		{
			name: "list routes",
			msg:  listRoutesMessage,
			want: `1c000000 1a00 0103 00000000 00000000` + // RTM_GETROUTE, dump
				`02 00 00 00 00 00 00 00 00000000`, // rtmsg AF_INET
		},
		{
			name: "replace default route",
			msg: func() (netlink.Message, error) {
				return replaceRouteMessage(Route{Index: 3, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.9.0.1")})
			},
			want: `34000000 1800 0505 00000000 00000000` + // RTM_NEWROUTE, create|replace
				`02 00 00 00 fe 03 00 01 00000000` + // AF_INET /0, main, RTPROT_BOOT, universe, unicast
				`0800 0500 0a090001` + // RTA_GATEWAY
				`0800 0400 03000000` + // RTA_OIF
				`0800 0f00 fe000000`, // RTA_TABLE main
		},
		{
			name: "replace default route, IPv4-mapped gateway",
			msg: func() (netlink.Message, error) {
				return replaceRouteMessage(Route{Index: 3, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("::ffff:10.9.0.1")})
			},
			want: `34000000 1800 0505 00000000 00000000` +
				`02 00 00 00 fe 03 00 01 00000000` +
				`0800 0500 0a090001` +
				`0800 0400 03000000` +
				`0800 0f00 fe000000`,
		},
		{
			name: "replace on-link route",
			msg: func() (netlink.Message, error) {
				return replaceRouteMessage(Route{Index: 3, Dst: netip.MustParsePrefix("10.10.0.0/16"), Scope: unix.RT_SCOPE_LINK})
			},
			want: `34000000 1800 0505 00000000 00000000` +
				`02 10 00 00 fe 03 fd 01 00000000` + // /16, scope link
				`0800 0100 0a0a0000` + // RTA_DST
				`0800 0400 03000000` +
				`0800 0f00 fe000000`,
		},
		{
			name: "replace route in table 1000, no link",
			msg: func() (netlink.Message, error) {
				return replaceRouteMessage(Route{Dst: netip.MustParsePrefix("192.0.2.7/32"), Gateway: netip.MustParseAddr("10.9.0.1"), Table: 1000})
			},
			want: `34000000 1800 0505 00000000 00000000` +
				`02 20 00 00 00 03 00 01 00000000` + // rtm_table RT_TABLE_UNSPEC
				`0800 0100 c0000207` +
				`0800 0500 0a090001` +
				`0800 0f00 e8030000`, // RTA_TABLE 1000
		},
		{
			name: "replace route in table 100",
			msg: func() (netlink.Message, error) {
				return replaceRouteMessage(Route{Index: 2, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.9.0.1"), Table: 100})
			},
			want: `34000000 1800 0505 00000000 00000000` +
				`02 00 00 00 64 03 00 01 00000000` +
				`0800 0500 0a090001` +
				`0800 0400 02000000` +
				`0800 0f00 64000000`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := tt.msg()
			if err != nil {
				t.Fatal(err)
			}
			got, err := wire(m)
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, tt.want); !bytes.Equal(got, want) {
				t.Errorf("got\n%x\nwant\n%x", got, want)
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	v4 := netip.MustParsePrefix("10.9.0.2/24")
	gw := netip.MustParseAddr("10.9.0.1")
	def := netip.MustParsePrefix("0.0.0.0/0")
	tests := []struct {
		name string
		msg  func() (netlink.Message, error)
		want string
	}{
		{"index 0", func() (netlink.Message, error) { return setUpMessage(0) }, "link index 0"},
		{"negative index", func() (netlink.Message, error) { return getLinkMessage(-1, "") }, "link index -1"},
		{"index beyond int32", func() (netlink.Message, error) { return setMTUMessage(math.MaxInt32+1, 1500) }, "is not valid"},
		{"empty name", func() (netlink.Message, error) { return getLinkMessage(0, "") }, "empty"},
		{"long name", func() (netlink.Message, error) { return setNameMessage(1, "abcdefghijklmnop") }, "longer than 15"},
		{"NUL in name", func() (netlink.Message, error) { return setNameMessage(1, "a\x00b") }, "NUL"},
		{"MTU 0", func() (netlink.Message, error) { return setMTUMessage(1, 0) }, "MTU 0"},
		{"no prefix", func() (netlink.Message, error) { return replaceAddrMessage(Addr{Index: 1}) }, "not IPv4"},
		{"IPv6 address", func() (netlink.Message, error) {
			return delAddrMessage(Addr{Index: 1, Prefix: netip.MustParsePrefix("fd00::1/64")})
		}, "not IPv4"},
		{"IPv4-mapped address", func() (netlink.Message, error) {
			return replaceAddrMessage(Addr{Index: 1, Prefix: netip.MustParsePrefix("::ffff:10.0.0.1/120")})
		}, "not IPv4"},
		{"address without link", func() (netlink.Message, error) { return replaceAddrMessage(Addr{Prefix: v4}) }, "link index 0"},
		{"preferred beyond valid", func() (netlink.Message, error) {
			return replaceAddrMessage(Addr{Index: 1, Prefix: v4, ValidLft: 30, PreferredLft: 31})
		}, "preferred lifetime 31s exceeds the valid lifetime 30s"},
		{"preferred forever, valid not", func() (netlink.Message, error) {
			return replaceAddrMessage(Addr{Index: 1, Prefix: v4, ValidLft: 30, PreferredLft: Forever})
		}, "exceeds"},
		{"route without destination", func() (netlink.Message, error) { return replaceRouteMessage(Route{Index: 1, Gateway: gw}) }, "not an IPv4 prefix"},
		{"IPv6 route", func() (netlink.Message, error) {
			return replaceRouteMessage(Route{Index: 1, Dst: netip.MustParsePrefix("::/0")})
		}, "not an IPv4 prefix"},
		{"host bits", func() (netlink.Message, error) {
			return replaceRouteMessage(Route{Index: 1, Dst: v4})
		}, "10.9.0.2/24 has host bits set (10.9.0.0/24?)"},
		{"IPv6 gateway", func() (netlink.Message, error) {
			return replaceRouteMessage(Route{Index: 1, Dst: def, Gateway: netip.MustParseAddr("fe80::1")})
		}, "gateway fe80::1 is not IPv4"},
		{"negative route index", func() (netlink.Message, error) {
			return replaceRouteMessage(Route{Index: -2, Dst: def, Gateway: gw})
		}, "link index -2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.msg()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one with %q", err, tt.want)
			}
		})
	}
}

// The replies are written as the kernel sends them, attributes we do not
// read included.
const (
	// RTM_NEWLINK data for lo: ARPHRD_LOOPBACK, index 1,
	// IFF_UP|IFF_LOOPBACK|IFF_RUNNING|IFF_LOWER_UP.
	linkLo = `00 00 0403 01000000 49000100 00000000` +
		`0700 0300 6c6f00 00` + // IFLA_IFNAME "lo"
		`0800 0d00 e8030000` + // IFLA_TXQLEN 1000 (ignored)
		`0800 0400 00000100` + // IFLA_MTU 65536
		`0a00 0100 000000000000 0000` + // IFLA_ADDRESS 00:00:00:00:00:00
		`0a00 0200 000000000000 0000` // IFLA_BROADCAST (ignored)
	// RTM_NEWLINK data for a veth that is up: ARPHRD_ETHER, index 3,
	// IFF_UP|IFF_BROADCAST|IFF_RUNNING|IFF_MULTICAST|IFF_LOWER_UP.
	linkVeth = `00 00 0100 03000000 43100100 00000000` +
		`0900 0300 65746830 00 000000` + // IFLA_IFNAME "eth0"
		`0800 0400 dc050000` + // IFLA_MTU 1500
		`0a00 0100 525400123456 0000` + // IFLA_ADDRESS
		`1000 1200 0900 0100 76657468 00 000000` // IFLA_LINKINFO {IFLA_INFO_KIND "veth"} (ignored)
	// RTM_NEWLINK data for a tun device, down, without IFLA_ADDRESS.
	linkTun = `00 00 fe ff 05000000 90100000 00000000` + // ARPHRD_NONE, IFF_POINTOPOINT|IFF_NOARP|IFF_MULTICAST
		`0900 0300 74756e30 00 000000` +
		`0800 0400 dc050000`

	// RTM_NEWADDR data: 10.9.0.2/24 on index 3, permanent.
	addrPermanent = `02 18 80 00 03000000` + // IFA_F_PERMANENT, scope universe
		`0800 0100 0a090002` + // IFA_ADDRESS
		`0800 0200 0a090002` + // IFA_LOCAL
		`0800 0400 0a0900ff` + // IFA_BROADCAST
		`0900 0300 65746830 00 000000` + // IFA_LABEL "eth0"
		`0800 0800 80000000` + // IFA_FLAGS
		`1400 0600 ffffffff ffffffff 2c010000 2c010000` // IFA_CACHEINFO
	// RTM_NEWADDR data: a lease's address, preferred 20 s, valid 30 s.
	addrLapsing = `02 18 00 00 03000000` +
		`0800 0100 0a090002` +
		`0800 0200 0a090002` +
		`1400 0600 14000000 1e000000 2c010000 90010000`
	// RTM_NEWADDR data: point-to-point, local 10.0.0.1, peer 10.0.0.2.
	addrPeer = `02 20 80 00 05000000` +
		`0800 0100 0a000002` + // IFA_ADDRESS: the peer
		`0800 0200 0a000001` + // IFA_LOCAL
		`1400 0600 ffffffff ffffffff 00000000 00000000`
	// RTM_NEWADDR data with IFA_ADDRESS only and no IFA_CACHEINFO.
	addrBare = `02 08 00 00 02000000 0800 0100 0a000001`
	// RTM_NEWADDR data for an IPv6 address (AF_INET6).
	addrIPv6 = `0a 40 80 00 03000000 1400 0100 fd000000000000000000000000000001`

	// RTM_NEWROUTE data: default via 10.9.0.1 on index 3, main table.
	routeDefault = `02 00 00 00 fe 03 00 01 00000000` +
		`0800 0f00 fe000000` + // RTA_TABLE
		`0800 0500 0a090001` + // RTA_GATEWAY
		`0800 0400 03000000` // RTA_OIF
	// RTM_NEWROUTE data: the prefix route of 10.9.0.2/24, RTPROT_KERNEL.
	routePrefix = `02 18 00 00 fe 02 fd 01 00000000` +
		`0800 0f00 fe000000` +
		`0800 0100 0a090000` + // RTA_DST
		`0800 0700 0a090002` + // RTA_PREFSRC (ignored)
		`0800 0400 03000000`
	// RTM_NEWROUTE data: a route in table 1000, without RTA_OIF.
	routeTable1000 = `02 20 00 00 00 03 00 01 00000000` +
		`0800 0f00 e8030000` +
		`0800 0100 c0000207` +
		`0800 0500 0a090001`
	// RTM_NEWROUTE data: an old-style reply, the table in rtm_table only.
	routeNoTableAttr = `02 10 00 00 fe 04 fd 01 00000000` +
		`0800 0100 0a0a0000` +
		`0800 0400 02000000`
	// RTM_NEWROUTE data: a local route (RTN_LOCAL) of the local table.
	routeLocal = `02 20 00 00 ff 02 fe 02 00000000` +
		`0800 0f00 ff000000` +
		`0800 0100 0a090002` +
		`0800 0700 0a090002` +
		`0800 0400 03000000`
	// RTM_NEWROUTE data: an IPv6 default route.
	routeIPv6 = `0a 00 00 00 fe 03 00 01 00000000` +
		`0800 0f00 fe000000` +
		`1400 0500 fe800000000000000000000000000001` +
		`0800 0400 03000000`
)

func TestParseLink(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name string
		data string
		want Link
	}{
		{"lo", linkLo, Link{Index: 1, Name: "lo", Flags: unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING | unix.IFF_LOWER_UP, MTU: 65536, HardwareAddr: net.HardwareAddr{0, 0, 0, 0, 0, 0}}},
		{"veth", linkVeth, Link{Index: 3, Name: "eth0", Flags: unix.IFF_UP | unix.IFF_BROADCAST | unix.IFF_RUNNING | unix.IFF_MULTICAST | unix.IFF_LOWER_UP, MTU: 1500, HardwareAddr: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}}},
		{"tun", linkTun, Link{Index: 5, Name: "tun0", Flags: unix.IFF_POINTOPOINT | unix.IFF_NOARP | unix.IFF_MULTICAST, MTU: 1500}},
		{"header only", `00 00 0100 07000000 00000000 00000000`, Link{Index: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLink(unhex(t, tt.data))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	lo, _ := parseLink(unhex(t, linkLo))
	veth, _ := parseLink(unhex(t, linkVeth))
	tun, _ := parseLink(unhex(t, linkTun))
	if !lo.Up() || !lo.Loopback() || !veth.Up() || veth.Loopback() || tun.Up() || tun.Loopback() {
		t.Errorf("Up, Loopback: lo %v %v, veth %v %v, tun %v %v; want true true, true false, false false",
			lo.Up(), lo.Loopback(), veth.Up(), veth.Loopback(), tun.Up(), tun.Loopback())
	}
}

func TestParseAddr(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name string
		data string
		want Addr
		ok   bool
	}{
		{"permanent", addrPermanent, Addr{Index: 3, Prefix: netip.MustParsePrefix("10.9.0.2/24"), ValidLft: Forever, PreferredLft: Forever}, true},
		{"lapsing", addrLapsing, Addr{Index: 3, Prefix: netip.MustParsePrefix("10.9.0.2/24"), ValidLft: 30, PreferredLft: 20}, true},
		{"point-to-point", addrPeer, Addr{Index: 5, Prefix: netip.MustParsePrefix("10.0.0.1/32"), ValidLft: Forever, PreferredLft: Forever}, true},
		{"IFA_ADDRESS only", addrBare, Addr{Index: 2, Prefix: netip.MustParsePrefix("10.0.0.1/8"), ValidLft: Forever, PreferredLft: Forever}, true},
		{"IPv6", addrIPv6, Addr{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := parseAddr(unhex(t, tt.data))
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.ok || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseRoute(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name string
		data string
		want Route
		ok   bool
	}{
		{"default", routeDefault, Route{Index: 3, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.9.0.1"), Table: unix.RT_TABLE_MAIN}, true},
		{"prefix route", routePrefix, Route{Index: 3, Dst: netip.MustParsePrefix("10.9.0.0/24"), Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN}, true},
		{"table 1000", routeTable1000, Route{Dst: netip.MustParsePrefix("192.0.2.7/32"), Gateway: netip.MustParseAddr("10.9.0.1"), Table: 1000}, true},
		{"no RTA_TABLE", routeNoTableAttr, Route{Index: 2, Dst: netip.MustParsePrefix("10.10.0.0/16"), Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN}, true},
		{"host bits are masked", `02 10 00 00 fe 03 fd 01 00000000 0800 0100 0a0a0102`, Route{Dst: netip.MustParsePrefix("10.10.0.0/16"), Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN}, true},
		{"local", routeLocal, Route{}, false},
		{"IPv6", routeIPv6, Route{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := parseRoute(unhex(t, tt.data))
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.ok || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name  string
		parse func([]byte) error
		data  string
		want  string
	}{
		{"empty link", parseLinkErr, ``, "shorter than its 16-byte header"},
		{"short link", parseLinkErr, `00 00 0100 03000000 43100100 000000`, "shorter"},
		{"link attribute beyond the message", parseLinkErr, `00 00 0100 03000000 43100100 00000000 0c00 0300 6574`, "invalid attribute"},
		{"link attribute shorter than its header", parseLinkErr, `00 00 0100 03000000 43100100 00000000 0200 0300`, "invalid attribute"},
		{"two-byte IFLA_MTU", parseLinkErr, `00 00 0100 03000000 43100100 00000000 0600 0400 dc05 0000`, "link message"},
		{"short address", parseAddrErr, `02 18 00 00 030000`, "shorter than its 8-byte header"},
		{"prefix length 33", parseAddrErr, `02 21 00 00 03000000 0800 0200 0a090002`, "prefix length 33"},
		{"three-byte IFA_LOCAL", parseAddrErr, `02 18 00 00 03000000 0700 0200 0a0900 00`, "IPv4 address of 3 bytes"},
		{"short IFA_CACHEINFO", parseAddrErr, `02 18 00 00 03000000 0800 0200 0a090002 1000 0600 ffffffff ffffffff 00000000`, "ifa_cacheinfo of 12 bytes"},
		{"no address", parseAddrErr, `02 18 00 00 03000000 0800 0800 80000000`, "no IFA_LOCAL"},
		{"short route", parseRouteErr, `02 00 00 00 fe 03 00 01 0000`, "shorter than its 12-byte header"},
		{"destination length 33", parseRouteErr, `02 21 00 00 fe 03 00 01 00000000`, "prefix length 33"},
		{"IPv6 RTA_DST in an IPv4 route", parseRouteErr, `02 10 00 00 fe 03 00 01 00000000 1400 0100 fd000000000000000000000000000001`, "IPv4 address of 16 bytes"},
		{"RTA_OIF beyond int32", parseRouteErr, `02 00 00 00 fe 03 00 01 00000000 0800 0400 00000080`, "RTA_OIF 2147483648"},
		{"short RTA_OIF", parseRouteErr, `02 00 00 00 fe 03 00 01 00000000 0600 0400 0300 0000`, "RTA_OIF of 2 bytes"},
		{"short RTA_TABLE", parseRouteErr, `02 00 00 00 fe 03 00 01 00000000 0500 0f00 fe 000000`, "route message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse(unhex(t, tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one with %q", err, tt.want)
			}
		})
	}
}

func parseLinkErr(b []byte) error  { _, err := parseLink(b); return err }
func parseAddrErr(b []byte) error  { _, _, err := parseAddr(b); return err }
func parseRouteErr(b []byte) error { _, _, err := parseRoute(b); return err }

// record is a header record under test.
type record interface {
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
}

func TestRecords(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name      string
		in, empty record
		want      string
	}{
		{"ifinfomsg", &ifInfoMsg{Family: 7, Type: 0x0304, Index: -2, Flags: 0x10049, Change: 0xffffffff}, &ifInfoMsg{},
			`07 00 0403 feffffff 49000100 ffffffff`},
		{"ifaddrmsg", &ifAddrMsg{Family: 2, PrefixLen: 24, Flags: 0x80, Scope: 0xfd, Index: 0x01020304}, &ifAddrMsg{},
			`02 18 80 fd 04030201`},
		{"rtmsg", &rtMsg{Family: 2, DstLen: 24, SrcLen: 8, TOS: 0x10, Table: 0xfe, Protocol: 3, Scope: 0xfd, Type: 1, Flags: 0x200}, &rtMsg{},
			`02 18 08 10 fe 03 fd 01 00020000`},
		{"ifa_cacheinfo", &ifaCacheinfo{Preferred: 20, Valid: 30, Created: 300, Updated: 400}, &ifaCacheinfo{},
			`14000000 1e000000 2c010000 90010000`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.in.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, tt.want)
			if !bytes.Equal(b, want) {
				t.Errorf("MarshalBinary: %x, want %x", b, want)
			}
			if err := tt.empty.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tt.empty, tt.in) {
				t.Errorf("UnmarshalBinary: %+v, want %+v", tt.empty, tt.in)
			}
			for _, n := range []int{0, len(want) - 1, len(want) + 1} {
				if err := tt.empty.UnmarshalBinary(make([]byte, n)); err == nil {
					t.Errorf("UnmarshalBinary of %d bytes: no error", n)
				}
			}
		})
	}
}

// A request that sets something parses back as what it sets: the
// request encoders and the reply decoders agree.
func TestRequestsParse(t *testing.T) {
	a := Addr{Index: 4, Prefix: netip.MustParsePrefix("10.9.0.2/24"), ValidLft: 60, PreferredLft: 50}
	m, err := replaceAddrMessage(a)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok, err := parseAddr(m.Data); err != nil || !ok || got != a {
		t.Errorf("address: %+v, %v, %v; want %+v", got, ok, err, a)
	}
	r := Route{Index: 4, Dst: netip.MustParsePrefix("10.10.0.0/16"), Gateway: netip.MustParseAddr("10.9.0.1"), Table: 1000}
	m, err = replaceRouteMessage(r)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok, err := parseRoute(m.Data); err != nil || !ok || got != r {
		t.Errorf("route: %+v, %v, %v; want %+v", got, ok, err, r)
	}
	m, err = setNameMessage(4, "eth1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := parseLink(m.Data); err != nil || got.Index != 4 || got.Name != "eth1" {
		t.Errorf("link: %+v, %v", got, err)
	}
}

func TestError(t *testing.T) {
	tests := []struct {
		err    *Error
		want   string
		target error
	}{
		{
			&Error{Op: "set up", Link: "eth0", Err: &netlink.OpError{Op: "receive", Err: unix.EPERM}},
			"rtnetlink: eth0: set up: operation not permitted", unix.EPERM,
		},
		{
			&Error{Op: "replace route 0.0.0.0/0 via 10.9.0.1", Link: "index 3", Err: &netlink.OpError{Op: "receive", Err: unix.ENETUNREACH, Message: "Nexthop has invalid gateway"}},
			"rtnetlink: index 3: replace route 0.0.0.0/0 via 10.9.0.1: network is unreachable (Nexthop has invalid gateway)", unix.ENETUNREACH,
		},
		{
			&Error{Op: "get link", Link: "index 9", Err: &netlink.OpError{Op: "receive", Err: unix.ENODEV}},
			"rtnetlink: index 9: get link: no such device", unix.ENODEV,
		},
		{
			&Error{Op: "list links", Err: unix.EMFILE},
			"rtnetlink: list links: too many open files", unix.EMFILE,
		},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		var err error = tt.err
		if !errors.Is(err, tt.target) {
			t.Errorf("%v: errors.Is(%v) is false", err, tt.target)
		}
		var e *Error
		if !errors.As(err, &e) || e != tt.err {
			t.Errorf("%v: errors.As(*Error) fails", err)
		}
	}
}
