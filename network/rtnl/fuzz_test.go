package rtnl

import (
	"bytes"
	"net/netip"
	"reflect"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The fuzz targets feed arbitrary bytes to a reply decoder, which must not
// panic, and check three round trips: the header record decodes and
// encodes back to the same bytes; what the decoder accepted, encoded as a
// reply, decodes to the same value; and so does a request made of it,
// where one can be made.

// seed adds the hex strings and the data of the requests to f's corpus,
// and the empty input and a truncated header of size bytes.
func seed(f *testing.F, size int, hexes []string, requests ...func() (netlink.Message, error)) {
	for _, h := range hexes {
		f.Add(unhex(f, h))
	}
	for _, req := range requests {
		m, err := req()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Data)
	}
	f.Add([]byte{})
	f.Add(make([]byte, size-1))
	f.Add(make([]byte, size))
}

// checkRecord checks that the record decoded from b[:size] encodes to the
// same bytes, but for those in pad.
func checkRecord(t *testing.T, b []byte, rec record, size int, pad ...int) {
	t.Helper()
	if len(b) < size {
		return
	}
	if err := rec.UnmarshalBinary(b[:size]); err != nil {
		t.Fatalf("UnmarshalBinary(%x): %v", b[:size], err)
	}
	got, err := rec.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(b[:size])
	for _, i := range pad {
		want[i] = 0
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("record round trip: %x, want %x", got, want)
	}
}

// linkReply is l encoded as the data of an RTM_NEWLINK message.
func linkReply(l Link) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if l.Name != "" {
		ae.String(unix.IFLA_IFNAME, l.Name)
	}
	ae.Uint32(unix.IFLA_MTU, uint32(l.MTU))
	if l.HardwareAddr != nil {
		ae.Bytes(unix.IFLA_ADDRESS, l.HardwareAddr)
	}
	m, err := message(unix.RTM_NEWLINK, 0, ifInfoMsg{Index: int32(l.Index), Flags: l.Flags}, ae)
	return m.Data, err
}

func FuzzParseLink(f *testing.F) {
	littleEndian(f)
	seed(f, sizeofIfInfoMsg, []string{linkLo, linkVeth, linkTun},
		listLinksMessage,
		func() (netlink.Message, error) { return getLinkMessage(0, "eth0") },
		func() (netlink.Message, error) { return setMTUMessage(2, 9000) },
		func() (netlink.Message, error) { return setNameMessage(2, "enp0s1") },
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRecord(t, b, &ifInfoMsg{}, sizeofIfInfoMsg, 1) // byte 1 is __ifi_pad
		l, err := parseLink(b)
		if err != nil {
			return
		}
		reply, err := linkReply(l)
		if err != nil {
			return // a name that filled its attribute has no room for a NUL
		}
		again, err := parseLink(reply)
		if err != nil || !reflect.DeepEqual(again, l) {
			t.Fatalf("reply round trip: %+v, %v; want %+v", again, err, l)
		}
		if checkIndex(l.Index) != nil || checkName(l.Name) != nil {
			return
		}
		m, err := setNameMessage(l.Index, l.Name)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := parseLink(m.Data); err != nil || again.Index != l.Index || again.Name != l.Name {
			t.Fatalf("request round trip: %+v, %v; want index %d, name %q", again, err, l.Index, l.Name)
		}
	})
}

// addrReply is a encoded as the data of an RTM_NEWADDR message.
func addrReply(a Addr) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.IFA_LOCAL, a.Prefix.Addr().AsSlice())
	ae.Do(unix.IFA_CACHEINFO, ifaCacheinfo{Preferred: a.PreferredLft, Valid: a.ValidLft}.MarshalBinary)
	h := ifAddrMsg{Family: unix.AF_INET, PrefixLen: uint8(a.Prefix.Bits()), Index: uint32(a.Index)}
	m, err := message(unix.RTM_NEWADDR, 0, h, ae)
	return m.Data, err
}

func FuzzParseAddr(f *testing.F) {
	littleEndian(f)
	seed(f, sizeofIfAddrMsg, []string{addrPermanent, addrLapsing, addrPeer, addrBare, addrIPv6},
		listAddrsMessage,
		func() (netlink.Message, error) {
			return replaceAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("10.9.0.2/24"), ValidLft: 30})
		},
		func() (netlink.Message, error) {
			return delAddrMessage(Addr{Index: 3, Prefix: netip.MustParsePrefix("10.9.0.2/31")})
		},
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRecord(t, b, &ifAddrMsg{}, sizeofIfAddrMsg)
		a, ok, err := parseAddr(b)
		if err != nil || !ok {
			return
		}
		reply, err := addrReply(a)
		if err != nil {
			t.Fatal(err)
		}
		again, ok, err := parseAddr(reply)
		if err != nil || !ok || again != a {
			t.Fatalf("reply round trip: %+v, %v, %v; want %+v", again, ok, err, a)
		}
		if checkIndex(a.Index) != nil || a.ValidLft == 0 || a.PreferredLft == 0 || a.PreferredLft > a.ValidLft {
			return
		}
		m, err := replaceAddrMessage(a)
		if err != nil {
			t.Fatal(err)
		}
		if again, ok, err := parseAddr(m.Data); err != nil || !ok || again != a {
			t.Fatalf("request round trip: %+v, %v, %v; want %+v", again, ok, err, a)
		}
	})
}

func FuzzParseRoute(f *testing.F) {
	littleEndian(f)
	seed(f, sizeofRtMsg, []string{routeDefault, routePrefix, routeTable1000, routeNoTableAttr, routeLocal, routeIPv6},
		listRoutesMessage,
		func() (netlink.Message, error) {
			return replaceRouteMessage(Route{Index: 2, Dst: netip.MustParsePrefix("10.10.0.0/16"), Scope: unix.RT_SCOPE_LINK})
		},
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRecord(t, b, &rtMsg{}, sizeofRtMsg)
		r, ok, err := parseRoute(b)
		if err != nil || !ok {
			return
		}
		// Every route the decoder accepts can be written back; a table
		// of 0 is written as the main table.
		m, err := replaceRouteMessage(r)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		want := r
		if want.Table == 0 {
			want.Table = unix.RT_TABLE_MAIN
		}
		again, ok, err := parseRoute(m.Data)
		if err != nil || !ok || again != want {
			t.Fatalf("round trip: %+v, %v, %v; want %+v", again, ok, err, want)
		}
	})
}
