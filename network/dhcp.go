package network

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
)

// Retransmission: RFC 2131 (4.1) starts at 4 s and doubles to 64 s, for a
// network of machines that have other things to do. A booting machine has
// nothing better to do than to ask again, and a lost first message should
// not cost seconds, so the first wait is short; the doubling still spares
// a server that is slow to answer, and the cap keeps a late server found
// soon. Each wait is stretched by up to a quarter at random, so that
// machines powered on together spread out.
const (
	firstWait = 250 * time.Millisecond
	maxWait   = 4 * time.Second
	// requestTries is how many times a REQUEST is sent before DISCOVER
	// starts over (RFC 2131 3.1.5: the client may restart).
	requestTries = 4
)

// client is a DHCPv4 client on one link. Every message carries the
// lease's hardware address and client identifier.
type client struct {
	log   *bootlog.Logger
	iface string
	hw    net.HardwareAddr
	cid   []byte
	want  netip.Addr       // the address to ask for in DISCOVER, if any
	raw   *nclient4.Client // broadcasts from 0.0.0.0 through a packet socket; nil until needed
	start time.Time
}

// newClient returns a DHCP client on lease's link, for lease's hardware
// address and client identifier. It opens no socket yet.
func newClient(log *bootlog.Logger, lease *Lease) (*client, error) {
	hw, err := net.ParseMAC(lease.HardwareAddr)
	if err != nil {
		return nil, &Error{Interface: lease.Interface, Op: "DHCP", Err: fmt.Errorf("hardware address: %w", err)}
	}
	return &client{log: log, iface: lease.Interface, hw: hw, cid: lease.ClientID, start: time.Now()}, nil
}

// broadcast returns the client on the link's packet socket, opening it the
// first time; close closes it.
func (c *client) broadcast() (*nclient4.Client, error) {
	if c.raw != nil {
		return c.raw, nil
	}
	conn, err := rawConn(c.iface)
	if err != nil {
		return nil, &Error{Interface: c.iface, Op: "DHCP socket", Err: err}
	}
	c.raw, err = nclient4.NewWithConn(conn, c.hw, nclient4.WithTimeout(time.Hour), nclient4.WithRetry(1), nclient4.WithLogger(clientLog{c.log}))
	if err != nil {
		conn.Close()
		return nil, &Error{Interface: c.iface, Op: "DHCP", Err: err}
	}
	return c.raw, nil
}

func (c *client) close() {
	if c.raw != nil {
		c.raw.Close()
		c.raw = nil
	}
}

// modifiers are what every message of c carries besides its own fields.
func (c *client) modifiers() []dhcpv4.Modifier {
	m := []dhcpv4.Modifier{dhcpv4.WithRequestedOptions(
		dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionDomainName, dhcpv4.OptionHostName, dhcpv4.OptionRootPath,
		dhcpv4.OptionInterfaceMTU, dhcpv4.OptionIPAddressLeaseTime,
		dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue, dhcpv4.OptionClasslessStaticRoute,
	), dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize))}
	if len(c.cid) > 0 {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(c.cid)))
	}
	return m
}

// acquire runs DISCOVER, OFFER, REQUEST, ACK until a lease is acknowledged
// or ctx is done, and fills in lease from the ACK. The first offer is
// taken. A NAK, or a REQUEST that goes unanswered, starts over. The packet
// socket is open before the first DISCOVER goes out, so no early offer is
// missed.
func (c *client) acquire(ctx context.Context, lease *Lease) error {
	raw, err := c.broadcast()
	if err != nil {
		return err
	}
	for {
		mods := c.modifiers()
		if c.want.IsValid() {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(c.want.AsSlice())))
		}
		discover, err := dhcpv4.NewDiscovery(c.hw, mods...)
		if err != nil {
			return err
		}
		offer, err := c.exchange(ctx, raw, nclient4.DefaultServers, discover, 0, maxWait, nclient4.IsMessageType(dhcpv4.MessageTypeOffer))
		if err != nil {
			return err
		}
		request, err := dhcpv4.NewRequestFromOffer(offer, c.modifiers()...)
		if err != nil {
			return err
		}
		ack, err := c.exchange(ctx, raw, nclient4.DefaultServers, request, requestTries, maxWait, nclient4.IsAll(
			nclient4.IsCorrectServer(offer.ServerIdentifier()),
			nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)))
		if errors.Is(err, errNoReply) {
			c.log.Debugf("network", "%s: no ACK from %v, starting over", c.iface, offer.ServerIdentifier())
			continue
		}
		if err != nil {
			return err
		}
		if ack.MessageType() == dhcpv4.MessageTypeNak {
			c.log.Debugf("network", "%s: NAK from %v: %s, starting over", c.iface, ack.ServerIdentifier(), ack.Message())
			continue
		}
		return leaseFromACK(lease, ack, time.Now())
	}
}

// errNoReply is exchange's answer when tries ran out.
var errNoReply = errors.New("no reply")

// exchange sends msg to dest through conn until a reply that match
// accepts arrives, waiting firstWait, then twice as long each time up to
// most; tries > 0 limits the number of sends.
func (c *client) exchange(ctx context.Context, conn *nclient4.Client, dest *net.UDPAddr, msg *dhcpv4.DHCPv4, tries int, most time.Duration, match nclient4.Matcher) (*dhcpv4.DHCPv4, error) {
	wait := firstWait
	for try := 1; ; try++ {
		msg.NumSeconds = uint16(min(time.Since(c.start)/time.Second, 0xffff))
		wctx, cancel := context.WithTimeout(ctx, wait+rand.N(wait/4+1))
		reply, err := conn.SendAndRead(wctx, dest, msg, match)
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
			// The send failed (the link is down, the route is gone): as
			// good as lost; wait as for a reply, and send again.
			c.log.Debugf("network", "%s: %v", c.iface, err)
			<-wctx.Done()
		}
		cancel()
		switch {
		case err == nil:
			return reply, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case tries > 0 && try >= tries:
			return nil, errNoReply
		}
		wait = min(2*wait, most)
	}
}

// rawConn opens a packet socket on iface that receives the UDP datagrams
// to port 68 (the client port) and sends UDP datagrams to the broadcast
// MAC address. A socket filter drops everything else in the kernel, so an
// open socket costs nothing while the root's I/O flows on the link.
func rawConn(iface string) (net.PacketConn, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	filter, err := bpf.Assemble(dhcpFilter())
	if err != nil {
		return nil, err
	}
	pc, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: filter})
	if err != nil {
		return nil, err
	}
	return nclient4.NewBroadcastUDPConn(downProof{pc}, &net.UDPAddr{Port: nclient4.ClientPort}), nil
}

// downProof is a packet socket that outlives its link going down: the
// kernel reports ENETDOWN once to a reader and delivers again when the
// link is up, while nclient4 would stop receiving at the first error.
type downProof struct{ net.PacketConn }

func (d downProof) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, a, err := d.PacketConn.ReadFrom(b)
		if !errors.Is(err, unix.ENETDOWN) {
			return n, a, err
		}
	}
}

// dhcpFilter accepts an IPv4 packet (the datagram socket's data starts at
// the IP header) that is UDP, not a later fragment, to port 68.
func dhcpFilter() []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1}, // protocol
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: 6},
		bpf.LoadAbsolute{Off: 6, Size: 2}, // flags and fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 4},
		bpf.LoadMemShift{Off: 0},          // X = IP header length
		bpf.LoadIndirect{Off: 2, Size: 2}, // UDP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: nclient4.ClientPort, SkipFalse: 1},
		bpf.RetConstant{Val: 0x40000},
		bpf.RetConstant{Val: 0},
	}
}

// unicast opens a DHCP client that sends from the lease's address to its
// server, for RENEW, and receives on the link's packet socket: the server
// answers an ACK unicast but may broadcast a NAK. The sending socket shares
// port 68 with the root's own DHCP client (dhclient binds it with
// SO_REUSEADDR too) and is bound to the link.
func (c *client) unicast(lease *Lease) (*nclient4.Client, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			serr = unix.BindToDevice(int(fd), c.iface)
		})
		return cmp.Or(err, serr) // err: fd's function did not run
	}}
	laddr := &net.UDPAddr{IP: lease.Address.Addr().AsSlice(), Port: nclient4.ClientPort}
	send, err := lc.ListenPacket(context.Background(), "udp4", laddr.String())
	if err != nil {
		return nil, err
	}
	recv, err := rawConn(c.iface)
	if err != nil {
		send.Close()
		return nil, err
	}
	server := &net.UDPAddr{IP: lease.DHCPServer.AsSlice(), Port: nclient4.ServerPort}
	cl, err := nclient4.NewWithConn(splitConn{send, recv}, c.hw, nclient4.WithTimeout(time.Hour), nclient4.WithRetry(1),
		nclient4.WithServerAddr(server), nclient4.WithLogger(clientLog{c.log}))
	if err != nil {
		send.Close()
		recv.Close()
		return nil, err
	}
	return cl, nil
}

// splitConn sends through one socket and receives through another.
type splitConn struct{ send, recv net.PacketConn }

func (s splitConn) ReadFrom(b []byte) (int, net.Addr, error)  { return s.recv.ReadFrom(b) }
func (s splitConn) WriteTo(b []byte, a net.Addr) (int, error) { return s.send.WriteTo(b, a) }
func (s splitConn) LocalAddr() net.Addr                       { return s.send.LocalAddr() }
func (s splitConn) Close() error                              { return errors.Join(s.send.Close(), s.recv.Close()) }
func (s splitConn) SetDeadline(t time.Time) error {
	return errors.Join(s.send.SetDeadline(t), s.recv.SetDeadline(t))
}
func (s splitConn) SetReadDeadline(t time.Time) error  { return s.recv.SetReadDeadline(t) }
func (s splitConn) SetWriteDeadline(t time.Time) error { return s.send.SetWriteDeadline(t) }

// clientLog sends nclient4's messages to the debug log.
type clientLog struct{ log *bootlog.Logger }

func (l clientLog) PrintMessage(prefix string, m *dhcpv4.DHCPv4) {
	l.log.Debugf("network", "DHCP %s: %s", prefix, m)
}

func (l clientLog) Printf(format string, v ...any) { l.log.Debugf("network", format, v...) }
