package network

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/net/bpf"
)

func TestLeaseFromACK(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	for _, tc := range []struct {
		name    string
		mods    []dhcpv4.Modifier
		want    Lease
		wantErr bool
	}{
		{"everything", []dhcpv4.Modifier{
			dhcpv4.WithYourIP(net.IPv4(10, 0, 2, 15)),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithRouter(net.IPv4(10, 0, 2, 2)),
			dhcpv4.WithDNS(net.IPv4(10, 0, 2, 3), net.IPv4(10, 0, 2, 4)),
			dhcpv4.WithOption(dhcpv4.OptDomainName("example.org")),
			dhcpv4.WithOption(dhcpv4.OptHostName("client1")),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, []byte{0x05, 0x78})),
			dhcpv4.WithServerIP(net.IPv4(10, 0, 2, 99)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 2, 2))),
			dhcpv4.WithLeaseTime(3600),
			dhcpv4.WithOption(dhcpv4.OptRootPath("10.0.2.2:10809/root")),
		}, Lease{
			DHCP: true, Address: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"),
			DNS: []netip.Addr{netip.MustParseAddr("10.0.2.3"), netip.MustParseAddr("10.0.2.4")}, Domain: "example.org",
			Hostname: "client1", MTU: 1400, DHCPServer: netip.MustParseAddr("10.0.2.2"), Acquired: at,
			LeaseTime: time.Hour, T1: 30 * time.Minute, T2: 3150 * time.Second, RootPath: "10.0.2.2:10809/root",
		}, false},
		{"bare: no mask, no server id, no lease time", []dhcpv4.Modifier{
			dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 7)),
			dhcpv4.WithServerIP(net.IPv4(192, 0, 2, 1)),
		}, Lease{
			DHCP: true, Address: netip.MustParsePrefix("192.0.2.7/32"), DHCPServer: netip.MustParseAddr("192.0.2.1"), Acquired: at,
			LeaseTime: infinite, T1: infinite / 2, T2: infinite / 8 * 7,
		}, false},
		{"T1 and T2 from the server, T2 before T1 ignored", []dhcpv4.Modifier{
			dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 7)),
			dhcpv4.WithLeaseTime(120),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRenewTimeValue, binary.BigEndian.AppendUint32(nil, 100))),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRebindingTimeValue, binary.BigEndian.AppendUint32(nil, 50))),
		}, Lease{
			DHCP: true, Address: netip.MustParsePrefix("192.0.2.7/32"), Acquired: at,
			LeaseTime: 2 * time.Minute, T1: 100 * time.Second, T2: 105 * time.Second,
		}, false},
		{"classless static routes win over the router option", []dhcpv4.Modifier{
			dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 7)),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithLeaseTime(120),
			dhcpv4.WithRouter(net.IPv4(192, 0, 2, 254)),
			dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4(10, 1, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}, Router: net.IPv4(192, 0, 2, 2)},
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4(198, 51, 100, 0).To4(), Mask: net.CIDRMask(24, 32)}, Router: net.IPv4zero},
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Router: net.IPv4(192, 0, 2, 1)},
			)),
		}, Lease{
			DHCP: true, Address: netip.MustParsePrefix("192.0.2.7/24"), Gateway: netip.MustParseAddr("192.0.2.1"),
			Routes:   []Route{{Dst: netip.MustParsePrefix("10.1.0.0/16"), Gateway: netip.MustParseAddr("192.0.2.2")}, {Dst: netip.MustParsePrefix("198.51.100.0/24")}},
			Acquired: at, LeaseTime: 2 * time.Minute, T1: time.Minute, T2: 105 * time.Second,
		}, false},
		{"no address", nil, Lease{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ack, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeAck)}, tc.mods...)...)
			if err != nil {
				t.Fatal(err)
			}
			var got Lease
			err = leaseFromACK(&got, ack, at)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestLeaseJSON(t *testing.T) {
	l := &Lease{Interface: "eth0", Index: 2, HardwareAddr: "52:54:00:12:34:56", Address: netip.MustParsePrefix("10.0.2.15/24"),
		Gateway: netip.MustParseAddr("10.0.2.2"), DNS: []netip.Addr{netip.MustParseAddr("10.0.2.3")}, MTU: 1400, DHCP: true,
		DHCPServer: netip.MustParseAddr("10.0.2.2"), Acquired: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
		LeaseTime: time.Hour, T1: 30 * time.Minute, T2: 52 * time.Minute, ClientID: []byte{1, 0x52, 0x54, 0, 0x12, 0x34, 0x56}, RootPath: "x"}
	b, err := MarshalLease(l)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalLease(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, l) {
		t.Errorf("round trip: %s\ngot  %+v\nwant %+v", b, got, l)
	}
	b, _ = MarshalLease(&Lease{})
	if string(b) != "{}" {
		t.Errorf("the empty lease is %s, want {}", b)
	}
	if _, err := UnmarshalLease([]byte(`{"address":"nonsense"}`)); err == nil {
		t.Error("a bad address decoded")
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		l    Lease
		want string
	}{
		{Lease{Interface: "eth0", Address: netip.MustParsePrefix("10.0.2.15/24"), DHCP: true, DHCPServer: netip.MustParseAddr("10.0.2.2")},
			"eth0 10.0.2.15/24 from DHCP server 10.0.2.2"},
		{Lease{Interface: "eth0", Address: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")},
			"eth0 10.0.2.15/24 static, via 10.0.2.2"},
		{Lease{Interface: "eth0", Address: netip.MustParsePrefix("10.0.2.15/24")}, "eth0 10.0.2.15/24 static, no gateway"},
	} {
		if got := tc.l.Summary(); got != tc.want {
			t.Errorf("Summary = %q, want %q", got, tc.want)
		}
	}
}

// TestDHCPFilter runs the packet socket's filter on IPv4 packets.
func TestDHCPFilter(t *testing.T) {
	vm, err := bpf.NewVM(dhcpFilter())
	if err != nil {
		t.Fatal(err)
	}
	// packet is an IPv4 header of ihl words, protocol proto, fragment
	// field frag, followed by a UDP header to port.
	packet := func(ihl int, proto byte, frag uint16, port uint16) []byte {
		p := make([]byte, ihl*4+8)
		p[0] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(p[6:], frag)
		p[9] = proto
		binary.BigEndian.PutUint16(p[ihl*4+2:], port)
		return p
	}
	for _, tc := range []struct {
		name string
		p    []byte
		want bool
	}{
		{"DHCP reply", packet(5, 17, 0, 68), true},
		{"DHCP reply with IP options", packet(7, 17, 0, 68), true},
		{"don't fragment is fine", packet(5, 17, 0x4000, 68), true},
		{"to the server port", packet(5, 17, 0, 67), false},
		{"NBD traffic", packet(5, 6, 0, 68), false},
		{"a later fragment", packet(5, 17, 0x0010, 68), false},
		{"too short", []byte{0x45, 0}, false},
	} {
		n, err := vm.Run(tc.p)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := n > 0; got != tc.want {
			t.Errorf("%s: accepted %v, want %v", tc.name, got, tc.want)
		}
	}
}

// MarshalLease encodes l as the keeper's arguments carry it (JSON).
func MarshalLease(l *Lease) ([]byte, error) { return json.Marshal(l) }

// UnmarshalLease decodes what MarshalLease encoded.
func UnmarshalLease(b []byte) (*Lease, error) {
	var l Lease
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	return &l, nil
}
