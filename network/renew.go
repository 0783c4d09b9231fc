package network

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/network/rtnl"
)

// renewMaxWait caps the retransmission of RENEW and REBIND: RFC 2131
// (4.4.5) waits half the remaining time but at least 60 s; a booted system
// retries sooner than that only while the time left is short.
const renewMaxWait = 60 * time.Second

// Renewer keeps a DHCP lease for as long as it runs: RENEW at T1, unicast
// to the server that granted it; REBIND at T2, broadcast to any server;
// and, after a NAK, after expiry or when told that the lease was released
// (Rerequest), a new DISCOVER asking for the same address. Every message
// carries the hardware address and client identifier of the first lease.
// Each new lease is installed on the link (address, route, MTU) at once.
type Renewer struct {
	log      *bootlog.Logger
	onChange func(*Lease)
	kick     chan struct{}

	mu    sync.Mutex
	lease Lease
}

// NewRenewer returns a Renewer for lease, which must be a DHCP lease.
// onChange, if set, is called with a copy of each new lease.
func NewRenewer(log *bootlog.Logger, lease *Lease, onChange func(*Lease)) *Renewer {
	l := *lease
	// A lease that came through JSON has only a wall-clock time, which
	// the root's NTP may step by hours; from here on T1, T2 and expiry are
	// counted on the monotonic clock.
	l.Acquired = time.Now().Add(-time.Since(lease.Acquired))
	return &Renewer{log: log, onChange: onChange, kick: make(chan struct{}, 1), lease: l}
}

// Lease returns a copy of the current lease.
func (r *Renewer) Lease() *Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lease
	return &l
}

// Rerequest asks the Renewer to renew now rather than at T1: the Guard
// calls it when the address was taken away, which usually means that the
// root's own DHCP client released the lease at the server.
func (r *Renewer) Rerequest() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run keeps the lease until ctx is done, and returns ctx.Err(). Failures
// are logged and retried; none ends Run.
func (r *Renewer) Run(ctx context.Context) error {
	for {
		l := r.Lease()
		if l.LeaseTime >= infinite {
			// Nothing to renew; only a release makes us ask again.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.kick:
			}
		} else if err := r.sleepUntil(ctx, l.Acquired.Add(l.T1)); err != nil {
			return err
		}
		// A release (the Guard's Rerequest) cannot wait for T2 and expiry:
		// the server may give the address away. Then each state gets
		// urgentWait, counted from now.
		urgent := time.Now().Before(l.Acquired.Add(l.T1))
		// renew picks the state from the clock (RENEWING before T2,
		// REBINDING before expiry, INIT after), so a retry after a failure
		// moves on as time does.
		for err := r.renew(ctx, l, urgent); err != nil; err = r.renew(ctx, r.Lease(), urgent) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.log.Errorf("network", "%s: keeping the lease: %v", l.Interface, err)
			if err := r.sleepUntil(ctx, time.Now().Add(maxWait)); err != nil {
				return err
			}
		}
	}
}

// sleepUntil waits for t, a Rerequest, or ctx.
func (r *Renewer) sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.kick:
	case <-timer.C:
	}
	return nil
}

// urgentWait is how long RENEW and REBIND each get after a release.
const urgentWait = 10 * time.Second

// renew runs the RENEWING, REBINDING and, if need be, INIT states for l,
// and installs what the server acknowledged. urgent (and an infinite lease)
// gives RENEW and REBIND urgentWait each instead of the time to T2 and to
// expiry.
func (r *Renewer) renew(ctx context.Context, l *Lease, urgent bool) error {
	c, err := newClient(r.log, l)
	if err != nil {
		return err
	}
	defer c.close()
	t2, expiry := l.Acquired.Add(l.T2), l.Expires()
	if now := time.Now(); urgent || l.LeaseTime >= infinite {
		t2, expiry = now.Add(urgentWait), now.Add(2*urgentWait)
	}
	next := *l
	var ack *dhcpv4.DHCPv4
	state := "renewed"
	if time.Now().Before(t2) {
		ack, err = c.renewUnicast(ctx, l, t2)
	}
	if ack == nil && err == nil && time.Now().Before(expiry) {
		state = "rebound"
		ack, err = c.rebind(ctx, l, expiry)
	}
	var nak *nclient4.ErrNak
	switch {
	case err != nil && !errors.As(err, &nak):
		return err
	case ack == nil || nak != nil:
		why := "no server answered"
		if nak != nil {
			why = fmt.Sprintf("the server refused it (%s)", cmp.Or(nak.Nak.Message(), "NAK"))
		}
		r.log.Printf("network", "%s: %s, asking for %s again", l.Interface, why, l.Address.Addr())
		state = "acquired anew"
		c.want = l.Address.Addr() // the same address, if the server agrees
		if err := c.acquire(ctx, &next); err != nil {
			return err
		}
	default:
		if err := leaseFromACK(&next, ack, time.Now()); err != nil {
			return err
		}
	}
	// The Guard restores what the current lease says: it changes before
	// the link does, lest a sweep in between restore the old address.
	r.mu.Lock()
	r.lease = next
	r.mu.Unlock()
	rc := &rtnl.Conn{}
	defer rc.Close()
	link, err := rc.LinkByIndex(l.Index)
	if err != nil {
		return &Error{Interface: l.Interface, Err: err}
	}
	old := l.Address
	if err := install(rc, link, &next, &old); err != nil {
		return err
	}
	if next.Address != old {
		r.log.Printf("network", "%s: the server gave %s instead of %s", l.Interface, next.Address, old)
	}
	r.log.Printf("network", "%s: lease of %s %s by %s until %s", l.Interface, next.Address.Addr(), state, next.DHCPServer, next.Expires().Format(time.TimeOnly))
	if r.onChange != nil {
		r.onChange(r.Lease())
	}
	return nil
}

// renewUnicast sends RENEW to the lease's server until it answers or t2.
// It returns a nil ACK and no error when t2 came first, and *nclient4.ErrNak
// for a NAK.
func (c *client) renewUnicast(ctx context.Context, l *Lease, t2 time.Time) (*dhcpv4.DHCPv4, error) {
	if !l.DHCPServer.IsValid() {
		return nil, nil // no server to ask: rebind
	}
	conn, err := c.unicast(l)
	if err != nil {
		// No unicast socket (the address was just taken away): rebind.
		c.log.Debugf("network", "%s: RENEW: %v", c.iface, err)
		return nil, nil
	}
	defer conn.Close()
	return c.extend(ctx, conn, conn.RemoteAddr(), l, t2, l.DHCPServer)
}

// rebind broadcasts REBIND until a server answers or deadline.
func (c *client) rebind(ctx context.Context, l *Lease, deadline time.Time) (*dhcpv4.DHCPv4, error) {
	raw, err := c.broadcast()
	if err != nil {
		return nil, err
	}
	return c.extend(ctx, raw, nclient4.DefaultServers, l, deadline, netip.Addr{})
}

// extend sends the REQUEST of the RENEWING and REBINDING states (RFC 2131
// 4.3.2: ciaddr is l's address; no server identifier and no requested
// address), unicast to server if valid and broadcast otherwise, until an
// ACK or NAK arrives (from server, if valid) or deadline passes.
func (c *client) extend(ctx context.Context, conn *nclient4.Client, dest *net.UDPAddr, l *Lease, deadline time.Time, server netip.Addr) (*dhcpv4.DHCPv4, error) {
	req, err := dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithHwAddr(c.hw),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(l.Address.Addr().AsSlice()),
		dhcpv4.WithBroadcast(!server.IsValid()),
	}, c.modifiers()...)...)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	match := nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)
	if server.IsValid() {
		match = nclient4.IsAll(match, nclient4.IsCorrectServer(server.AsSlice()))
	}
	reply, err := c.exchange(dctx, conn, dest, req, 0, renewMaxWait, match)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, nil
		}
		return nil, err
	}
	if reply.MessageType() == dhcpv4.MessageTypeNak {
		return nil, &nclient4.ErrNak{Nak: reply}
	}
	return reply, nil
}
