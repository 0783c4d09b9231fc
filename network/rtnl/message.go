package rtnl

import (
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The rtnetlink messages are an nlmsghdr (which package netlink handles),
// a fixed header record, and attributes, all in host byte order. The
// records below are the kernel's structs from include/uapi/linux/
// rtnetlink.h and if_addr.h; their sizes are multiples of 4, so the
// attributes start right after them.
const (
	sizeofIfInfoMsg    = unix.SizeofIfInfomsg    // 16
	sizeofIfAddrMsg    = unix.SizeofIfAddrmsg    // 8
	sizeofRtMsg        = unix.SizeofRtMsg        // 12
	sizeofIfaCacheinfo = unix.SizeofIfaCacheinfo // 16
)

// Header flags of the requests.
// A get asks for no acknowledgement: the kernel answers with the object or
// an error, and an acknowledgement after the object would be left unread
// on a Conn's socket, to be taken for the next request's answer.
const (
	flagsGet     = netlink.Request
	flagsRequest = netlink.Request | netlink.Acknowledge
	flagsDump    = netlink.Request | netlink.Dump
	flagsReplace = netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Replace
)

// ifInfoMsg is struct ifinfomsg, the header of RTM_*LINK messages.
type ifInfoMsg struct {
	Family uint8  // ifi_family; then a pad byte
	Type   uint16 // ifi_type, ARPHRD_*
	Index  int32  // ifi_index
	Flags  uint32 // ifi_flags, IFF_*
	Change uint32 // ifi_change: the IFF_* bits of Flags to apply
}

// MarshalBinary encodes the 16 bytes of struct ifinfomsg.
func (m ifInfoMsg) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeofIfInfoMsg)
	b[0] = m.Family
	binary.NativeEndian.PutUint16(b[2:], m.Type)
	binary.NativeEndian.PutUint32(b[4:], uint32(m.Index))
	binary.NativeEndian.PutUint32(b[8:], m.Flags)
	binary.NativeEndian.PutUint32(b[12:], m.Change)
	return b, nil
}

// UnmarshalBinary decodes exactly the 16 bytes of struct ifinfomsg.
func (m *ifInfoMsg) UnmarshalBinary(b []byte) error {
	if len(b) != sizeofIfInfoMsg {
		return lengthError("ifinfomsg", len(b), sizeofIfInfoMsg)
	}
	*m = ifInfoMsg{
		Family: b[0],
		Type:   binary.NativeEndian.Uint16(b[2:]),
		Index:  int32(binary.NativeEndian.Uint32(b[4:])),
		Flags:  binary.NativeEndian.Uint32(b[8:]),
		Change: binary.NativeEndian.Uint32(b[12:]),
	}
	return nil
}

// ifAddrMsg is struct ifaddrmsg, the header of RTM_*ADDR messages.
type ifAddrMsg struct {
	Family    uint8  // ifa_family
	PrefixLen uint8  // ifa_prefixlen
	Flags     uint8  // ifa_flags, IFA_F_* (the low 8 bits; IFA_FLAGS has all)
	Scope     uint8  // ifa_scope, RT_SCOPE_*
	Index     uint32 // ifa_index
}

// MarshalBinary encodes the 8 bytes of struct ifaddrmsg.
func (m ifAddrMsg) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeofIfAddrMsg)
	b[0], b[1], b[2], b[3] = m.Family, m.PrefixLen, m.Flags, m.Scope
	binary.NativeEndian.PutUint32(b[4:], m.Index)
	return b, nil
}

// UnmarshalBinary decodes exactly the 8 bytes of struct ifaddrmsg.
func (m *ifAddrMsg) UnmarshalBinary(b []byte) error {
	if len(b) != sizeofIfAddrMsg {
		return lengthError("ifaddrmsg", len(b), sizeofIfAddrMsg)
	}
	*m = ifAddrMsg{Family: b[0], PrefixLen: b[1], Flags: b[2], Scope: b[3], Index: binary.NativeEndian.Uint32(b[4:])}
	return nil
}

// rtMsg is struct rtmsg, the header of RTM_*ROUTE messages.
type rtMsg struct {
	Family   uint8  // rtm_family
	DstLen   uint8  // rtm_dst_len
	SrcLen   uint8  // rtm_src_len
	TOS      uint8  // rtm_tos
	Table    uint8  // rtm_table; RTA_TABLE has tables beyond 255
	Protocol uint8  // rtm_protocol, RTPROT_*
	Scope    uint8  // rtm_scope, RT_SCOPE_*
	Type     uint8  // rtm_type, RTN_*
	Flags    uint32 // rtm_flags, RTM_F_*
}

// MarshalBinary encodes the 12 bytes of struct rtmsg.
func (m rtMsg) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeofRtMsg)
	b[0], b[1], b[2], b[3] = m.Family, m.DstLen, m.SrcLen, m.TOS
	b[4], b[5], b[6], b[7] = m.Table, m.Protocol, m.Scope, m.Type
	binary.NativeEndian.PutUint32(b[8:], m.Flags)
	return b, nil
}

// UnmarshalBinary decodes exactly the 12 bytes of struct rtmsg.
func (m *rtMsg) UnmarshalBinary(b []byte) error {
	if len(b) != sizeofRtMsg {
		return lengthError("rtmsg", len(b), sizeofRtMsg)
	}
	*m = rtMsg{
		Family: b[0], DstLen: b[1], SrcLen: b[2], TOS: b[3],
		Table: b[4], Protocol: b[5], Scope: b[6], Type: b[7],
		Flags: binary.NativeEndian.Uint32(b[8:]),
	}
	return nil
}

// ifaCacheinfo is struct ifa_cacheinfo, the data of IFA_CACHEINFO. Note
// the order: the preferred lifetime comes first.
type ifaCacheinfo struct {
	Preferred uint32 // ifa_prefered, seconds
	Valid     uint32 // ifa_valid, seconds
	Created   uint32 // cstamp, hundredths of seconds since boot
	Updated   uint32 // tstamp
}

// MarshalBinary encodes the 16 bytes of struct ifa_cacheinfo.
func (c ifaCacheinfo) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeofIfaCacheinfo)
	binary.NativeEndian.PutUint32(b[0:], c.Preferred)
	binary.NativeEndian.PutUint32(b[4:], c.Valid)
	binary.NativeEndian.PutUint32(b[8:], c.Created)
	binary.NativeEndian.PutUint32(b[12:], c.Updated)
	return b, nil
}

// UnmarshalBinary decodes exactly the 16 bytes of struct ifa_cacheinfo.
func (c *ifaCacheinfo) UnmarshalBinary(b []byte) error {
	if len(b) != sizeofIfaCacheinfo {
		return lengthError("ifa_cacheinfo", len(b), sizeofIfaCacheinfo)
	}
	*c = ifaCacheinfo{
		Preferred: binary.NativeEndian.Uint32(b[0:]),
		Valid:     binary.NativeEndian.Uint32(b[4:]),
		Created:   binary.NativeEndian.Uint32(b[8:]),
		Updated:   binary.NativeEndian.Uint32(b[12:]),
	}
	return nil
}

func lengthError(what string, n, want int) error {
	return fmt.Errorf("%s of %d bytes, want %d", what, n, want)
}

// message builds a request of the type: header h, then the attributes of
// ae (none if ae is nil).
func message(typ netlink.HeaderType, flags netlink.HeaderFlags, h encoding.BinaryMarshaler, ae *netlink.AttributeEncoder) (netlink.Message, error) {
	b, err := h.MarshalBinary()
	if err != nil {
		return netlink.Message{}, err
	}
	if ae != nil {
		attrs, err := ae.Encode()
		if err != nil {
			return netlink.Message{}, err
		}
		b = append(b, attrs...)
	}
	return netlink.Message{Header: netlink.Header{Type: typ, Flags: flags}, Data: b}, nil
}

// checkIndex checks a link index for the kernel's int ifindex.
func checkIndex(index int) error {
	if index <= 0 || index > math.MaxInt32 {
		return fmt.Errorf("link index %d is not valid", index)
	}
	return nil
}

// checkName checks a link name for the kernel's IFNAMSIZ; the kernel
// checks the rest (no '/', ':' or white space).
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("the link name is empty")
	case len(name) >= unix.IFNAMSIZ:
		return fmt.Errorf("link name %q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("link name %q has a NUL byte", name)
	}
	return nil
}

// listLinksMessage is RTM_GETLINK for all links.
func listLinksMessage() (netlink.Message, error) {
	return message(unix.RTM_GETLINK, flagsDump, ifInfoMsg{Family: unix.AF_UNSPEC}, nil)
}

// getLinkMessage is RTM_GETLINK for the link with the index, or, if the
// index is 0, the name.
func getLinkMessage(index int, name string) (netlink.Message, error) {
	if index != 0 {
		if err := checkIndex(index); err != nil {
			return netlink.Message{}, err
		}
		return message(unix.RTM_GETLINK, flagsGet, ifInfoMsg{Index: int32(index)}, nil)
	}
	if err := checkName(name); err != nil {
		return netlink.Message{}, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, name)
	return message(unix.RTM_GETLINK, flagsGet, ifInfoMsg{}, ae)
}

// setUpMessage is RTM_NEWLINK setting IFF_UP and no other flag.
func setUpMessage(index int) (netlink.Message, error) {
	if err := checkIndex(index); err != nil {
		return netlink.Message{}, err
	}
	return message(unix.RTM_NEWLINK, flagsRequest, ifInfoMsg{Index: int32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}, nil)
}

// setNameMessage is RTM_NEWLINK with IFLA_IFNAME.
func setNameMessage(index int, name string) (netlink.Message, error) {
	if err := checkIndex(index); err != nil {
		return netlink.Message{}, err
	}
	if err := checkName(name); err != nil {
		return netlink.Message{}, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, name)
	return message(unix.RTM_NEWLINK, flagsRequest, ifInfoMsg{Index: int32(index)}, ae)
}

// setMTUMessage is RTM_NEWLINK with IFLA_MTU.
func setMTUMessage(index, mtu int) (netlink.Message, error) {
	if err := checkIndex(index); err != nil {
		return netlink.Message{}, err
	}
	if mtu <= 0 || mtu > math.MaxInt32 {
		return netlink.Message{}, fmt.Errorf("MTU %d is not valid", mtu)
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_MTU, uint32(mtu))
	return message(unix.RTM_NEWLINK, flagsRequest, ifInfoMsg{Index: int32(index)}, ae)
}

// parseLink decodes the data of an RTM_NEWLINK message.
func parseLink(b []byte) (Link, error) {
	var h ifInfoMsg
	attrs, err := split(b, &h, sizeofIfInfoMsg)
	if err != nil {
		return Link{}, err
	}
	l := Link{Index: int(h.Index), Flags: h.Flags}
	err = decode(attrs, func(ad *netlink.AttributeDecoder) {
		switch ad.Type() {
		case unix.IFLA_IFNAME:
			l.Name = ad.String()
		case unix.IFLA_MTU:
			l.MTU = int(ad.Uint32())
		case unix.IFLA_ADDRESS:
			l.HardwareAddr = nil
			if b := ad.Bytes(); len(b) > 0 {
				l.HardwareAddr = net.HardwareAddr(b)
			}
		}
	})
	if err != nil {
		return Link{}, fmt.Errorf("link message: %w", err)
	}
	return l, nil
}

// listAddrsMessage is RTM_GETADDR for the IPv4 addresses of all links.
func listAddrsMessage() (netlink.Message, error) {
	return message(unix.RTM_GETADDR, flagsDump, ifAddrMsg{Family: unix.AF_INET}, nil)
}

// addrHeader is the ifaddrmsg for a.
func addrHeader(a Addr) (ifAddrMsg, error) {
	if err := checkIndex(a.Index); err != nil {
		return ifAddrMsg{}, err
	}
	if !a.Prefix.IsValid() || !a.Prefix.Addr().Is4() {
		return ifAddrMsg{}, fmt.Errorf("address %v is not IPv4 with a prefix length", a.Prefix)
	}
	return ifAddrMsg{Family: unix.AF_INET, PrefixLen: uint8(a.Prefix.Bits()), Scope: unix.RT_SCOPE_UNIVERSE, Index: uint32(a.Index)}, nil
}

// lifetimes are a's lifetimes as the kernel takes them: a valid lifetime
// of 0 is Forever, a preferred one of 0 is the valid one.
func lifetimes(a Addr) (ifaCacheinfo, error) {
	c := ifaCacheinfo{Valid: a.ValidLft, Preferred: a.PreferredLft}
	if c.Valid == 0 {
		c.Valid = Forever
	}
	if c.Preferred == 0 {
		c.Preferred = c.Valid
	}
	if c.Preferred > c.Valid {
		return ifaCacheinfo{}, fmt.Errorf("the preferred lifetime %ds exceeds the valid lifetime %ds", c.Preferred, c.Valid)
	}
	return c, nil
}

// replaceAddrMessage is RTM_NEWADDR creating or replacing a.
func replaceAddrMessage(a Addr) (netlink.Message, error) {
	h, err := addrHeader(a)
	if err != nil {
		return netlink.Message{}, err
	}
	ci, err := lifetimes(a)
	if err != nil {
		return netlink.Message{}, err
	}
	ip := a.Prefix.Addr().AsSlice()
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.IFA_LOCAL, ip)
	ae.Bytes(unix.IFA_ADDRESS, ip)
	if bits := a.Prefix.Bits(); bits < 31 {
		brd := binary.BigEndian.Uint32(ip) | ^uint32(0)>>bits
		ae.Bytes(unix.IFA_BROADCAST, binary.BigEndian.AppendUint32(nil, brd))
	}
	ae.Do(unix.IFA_CACHEINFO, ci.MarshalBinary)
	return message(unix.RTM_NEWADDR, flagsReplace, h, ae)
}

// delAddrMessage is RTM_DELADDR for a.
func delAddrMessage(a Addr) (netlink.Message, error) {
	h, err := addrHeader(a)
	if err != nil {
		return netlink.Message{}, err
	}
	ip := a.Prefix.Addr().AsSlice()
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.IFA_LOCAL, ip)
	ae.Bytes(unix.IFA_ADDRESS, ip)
	return message(unix.RTM_DELADDR, flagsRequest, h, ae)
}

// parseAddr decodes the data of an RTM_NEWADDR message. ok is false for
// an address of another family than IPv4, which is not decoded.
func parseAddr(b []byte) (a Addr, ok bool, err error) {
	var h ifAddrMsg
	attrs, err := split(b, &h, sizeofIfAddrMsg)
	if err != nil {
		return Addr{}, false, err
	}
	if h.Family != unix.AF_INET {
		return Addr{}, false, nil
	}
	if h.PrefixLen > 32 {
		return Addr{}, false, fmt.Errorf("address message: prefix length %d", h.PrefixLen)
	}
	var local, address netip.Addr
	ci := ifaCacheinfo{Valid: Forever, Preferred: Forever}
	err = decode(attrs, func(ad *netlink.AttributeDecoder) {
		switch ad.Type() {
		case unix.IFA_LOCAL:
			ad.Do(ip4(&local))
		case unix.IFA_ADDRESS:
			ad.Do(ip4(&address))
		case unix.IFA_CACHEINFO:
			ad.Do(ci.UnmarshalBinary)
		}
	})
	if err != nil {
		return Addr{}, false, fmt.Errorf("address message: %w", err)
	}
	// IFA_ADDRESS is the peer's address on a point-to-point link.
	ip := local
	if !ip.IsValid() {
		ip = address
	}
	if !ip.IsValid() {
		return Addr{}, false, errors.New("address message: no IFA_LOCAL or IFA_ADDRESS")
	}
	return Addr{
		Index:        int(h.Index),
		Prefix:       netip.PrefixFrom(ip, int(h.PrefixLen)),
		ValidLft:     ci.Valid,
		PreferredLft: ci.Preferred,
	}, true, nil
}

// listRoutesMessage is RTM_GETROUTE for the IPv4 routes of all tables.
func listRoutesMessage() (netlink.Message, error) {
	return message(unix.RTM_GETROUTE, flagsDump, rtMsg{Family: unix.AF_INET}, nil)
}

// replaceRouteMessage is RTM_NEWROUTE creating or replacing r, as a
// unicast route installed at boot (RTPROT_BOOT, as iproute2's default).
func replaceRouteMessage(r Route) (netlink.Message, error) {
	if !r.Dst.IsValid() || !r.Dst.Addr().Is4() {
		return netlink.Message{}, fmt.Errorf("destination %v is not an IPv4 prefix", r.Dst)
	}
	if r.Dst != r.Dst.Masked() {
		return netlink.Message{}, fmt.Errorf("destination %v has host bits set (%v?)", r.Dst, r.Dst.Masked())
	}
	gw := r.Gateway.Unmap()
	if r.Gateway.IsValid() && !gw.Is4() {
		return netlink.Message{}, fmt.Errorf("gateway %v is not IPv4", r.Gateway)
	}
	if r.Index != 0 {
		if err := checkIndex(r.Index); err != nil {
			return netlink.Message{}, err
		}
	}
	table := r.Table
	if table == 0 {
		table = unix.RT_TABLE_MAIN
	}
	h := rtMsg{
		Family:   unix.AF_INET,
		DstLen:   uint8(r.Dst.Bits()),
		Table:    unix.RT_TABLE_UNSPEC, // RTA_TABLE names it
		Protocol: unix.RTPROT_BOOT,
		Scope:    r.Scope,
		Type:     unix.RTN_UNICAST,
	}
	if table < 256 {
		h.Table = uint8(table)
	}
	ae := netlink.NewAttributeEncoder()
	if r.Dst.Bits() > 0 {
		ae.Bytes(unix.RTA_DST, r.Dst.Addr().AsSlice())
	}
	if gw.IsValid() {
		ae.Bytes(unix.RTA_GATEWAY, gw.AsSlice())
	}
	if r.Index != 0 {
		ae.Uint32(unix.RTA_OIF, uint32(r.Index))
	}
	ae.Uint32(unix.RTA_TABLE, table)
	return message(unix.RTM_NEWROUTE, flagsReplace, h, ae)
}

// parseRoute decodes the data of an RTM_NEWROUTE message. ok is false for
// a route that is not IPv4 unicast, which is not decoded.
func parseRoute(b []byte) (r Route, ok bool, err error) {
	var h rtMsg
	attrs, err := split(b, &h, sizeofRtMsg)
	if err != nil {
		return Route{}, false, err
	}
	if h.Family != unix.AF_INET || h.Type != unix.RTN_UNICAST {
		return Route{}, false, nil
	}
	if h.DstLen > 32 {
		return Route{}, false, fmt.Errorf("route message: destination prefix length %d", h.DstLen)
	}
	r = Route{Scope: h.Scope, Table: uint32(h.Table)}
	dst := netip.IPv4Unspecified()
	err = decode(attrs, func(ad *netlink.AttributeDecoder) {
		switch ad.Type() {
		case unix.RTA_DST:
			ad.Do(ip4(&dst))
		case unix.RTA_GATEWAY:
			ad.Do(ip4(&r.Gateway))
		case unix.RTA_OIF:
			ad.Do(func(b []byte) error {
				if len(b) != 4 {
					return lengthError("RTA_OIF", len(b), 4)
				}
				v := binary.NativeEndian.Uint32(b)
				if v > math.MaxInt32 {
					return fmt.Errorf("RTA_OIF %d", v)
				}
				r.Index = int(v)
				return nil
			})
		case unix.RTA_TABLE:
			r.Table = ad.Uint32()
		}
	})
	if err != nil {
		return Route{}, false, fmt.Errorf("route message: %w", err)
	}
	r.Dst = netip.PrefixFrom(dst, int(h.DstLen)).Masked()
	return r, true, nil
}

// split decodes the header record at the start of b, of size bytes, into
// h and returns the attributes that follow it.
func split(b []byte, h encoding.BinaryUnmarshaler, size int) ([]byte, error) {
	if len(b) < size {
		return nil, fmt.Errorf("message of %d bytes, shorter than its %d-byte header", len(b), size)
	}
	if err := h.UnmarshalBinary(b[:size]); err != nil {
		return nil, err
	}
	return b[size:], nil
}

// decode calls fn for each attribute in b, and returns the first error of
// the decoder (fn reports its errors through the decoder's methods).
func decode(b []byte, fn func(ad *netlink.AttributeDecoder)) error {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return err
	}
	for ad.Next() {
		fn(ad)
	}
	return ad.Err()
}

// ip4 is an AttributeDecoder.Do function that decodes a 4-byte IPv4
// address into ip.
func ip4(ip *netip.Addr) func([]byte) error {
	return func(b []byte) error {
		if len(b) != 4 {
			return lengthError("IPv4 address", len(b), 4)
		}
		*ip = netip.AddrFrom4([4]byte(b))
		return nil
	}
}
