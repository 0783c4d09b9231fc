package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/network/rtnl"
)

// Guard timing: a sweep runs at every rtnetlink event on any link, and
// every guardSweep besides; a kind of restoration is logged at most once
// per guardLogEvery.
//
// The events are what the guard relies on. The kernel reports a change to
// a link, an address or a route; the routes it drops on its own when their
// link goes down or their address goes are not reported one by one, but
// the link's or the address's own event is. When the kernel drops events
// (the socket's buffer overflowed), the subscription fails with ENOBUFS,
// and the guard sweeps and subscribes again. The timed sweep is insurance
// against what nobody foresaw, so it is rare: at the 5 s it once was,
// twelve of a Debian root's nineteen sweeps in its first minute were timed
// ones, each leaving garbage behind.
const (
	guardSweep       = time.Minute
	guardResubscribe = 5 * time.Second // after a failed subscription
	guardLogEvery    = time.Minute
)

// Guard keeps the root link up, the lease's address on it and, when no
// other default route exists, the lease's default route, whatever the
// root's own network stack does. It watches rtnetlink (link, address and
// route changes) and restores what went missing the moment it goes.
type Guard struct {
	log    *bootlog.Logger
	lease  func() *Lease
	onLost func()

	mu     sync.Mutex
	logged map[string]guardLog

	// sweeping serialises sweeps; conn, the socket they ask rtnetlink
	// on, is opened by the first and closed when Run returns. One socket
	// for the keeper's life, its buffers reused: a socket per request made
	// 33 KiB of garbage a sweep on the host, one socket 14 KiB, and its
	// reused buffers 2.6 KiB; the garbage is what lifts the keeper's heap
	// to its next collection.
	sweeping sync.Mutex
	conn     *rtnl.Conn
}

type guardLog struct {
	at     time.Time
	missed int // restorations since, not logged
}

// NewGuard returns a Guard for the lease that lease returns (it may change
// as the Renewer renews). onAddrLost, if set, is called after the address
// was restored: whoever removed it probably released the lease too.
func NewGuard(log *bootlog.Logger, lease func() *Lease, onAddrLost func()) *Guard {
	return &Guard{log: log, lease: lease, onLost: onAddrLost, logged: map[string]guardLog{}}
}

// Run guards until ctx is done and returns ctx.Err().
func (g *Guard) Run(ctx context.Context) error {
	defer g.closeConn()
	for {
		if err := g.watch(ctx); err != nil {
			return err
		}
		// A subscription ended (the kernel dropped events, ENOBUFS):
		// sweep and subscribe again.
		g.Sweep()
	}
}

// watch subscribes to rtnetlink and sweeps at each event until ctx is done
// (returning its error) or the subscription fails (returning nil).
//
// One socket carries the link, IPv4 address and IPv4 route groups, read
// through Go's poller: a keeper holds no thread blocked in recvfrom for it.
// The events are only a cue to sweep, so they are not decoded.
func (g *Guard) watch(ctx context.Context) error {
	sub, err := rtnl.Subscribe(unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV4_ROUTE)
	if err != nil {
		// Log it and wait, so that Run subscribes again.
		g.log.Errorf("network", "guard: %v", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(guardResubscribe):
			return nil
		}
	}
	done := make(chan struct{})
	defer func() { close(done); sub.Close() }()
	events := make(chan struct{}, 1)
	failed := make(chan error, 1)
	go func() {
		for {
			if err := sub.Wait(); err != nil {
				failed <- err // ENOBUFS (events were dropped), or closed by watch
				return
			}
			select {
			case events <- struct{}{}:
			case <-done:
				return
			default: // a sweep is pending already
			}
		}
	}()
	g.Sweep() // what happened before the subscription
	tick := time.NewTicker(guardSweep)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			g.log.Debugf("network", "guard: rtnetlink: %v", err)
			return nil
		case <-events:
		case <-tick.C:
		}
		g.Sweep()
	}
}

// closeConn closes the sweeps' socket, if one is open.
func (g *Guard) closeConn() {
	g.sweeping.Lock()
	defer g.sweeping.Unlock()
	if g.conn != nil {
		g.conn.Close()
		g.conn = nil
	}
}

// Sweep checks the link, its address and its default route once and
// restores what is missing.
func (g *Guard) Sweep() {
	g.sweeping.Lock()
	defer g.sweeping.Unlock()
	l := g.lease()
	if l.Interface == "" || !l.Address.IsValid() {
		return
	}
	if g.conn == nil {
		c, err := rtnl.Dial()
		if err != nil {
			g.log.Debugf("network", "guard: %v", err)
			return
		}
		g.conn = c
	}
	link, err := g.conn.LinkByIndex(l.Index)
	if err != nil {
		g.note("gone", "%s (index %d) is gone: %v", l.Interface, l.Index, err)
		return
	}
	if !link.Up() {
		g.restored("up", g.conn.SetUp(link.Index), l.Interface+" was set down", "setting it up", "set it up again")
	}
	if lost := g.sweepAddr(l); lost && g.onLost != nil {
		g.onLost()
	}
	g.sweepRoute(l)
}

// sweepAddr restores l's address on its link if it is missing or lapses,
// and reports whether it was missing.
func (g *Guard) sweepAddr(l *Lease) bool {
	addrs, err := g.conn.Addrs(l.Index)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.Prefix == l.Address {
			if a.ValidLft == rtnl.Forever {
				return false
			}
			g.restored("lft", g.conn.ReplaceAddr(rootAddr(l)),
				fmt.Sprintf("%s: %s was given a lifetime of %ds", l.Interface, l.Address, a.ValidLft), "making it permanent", "made it permanent again")
			return false
		}
	}
	err = g.conn.ReplaceAddr(rootAddr(l))
	g.restored("addr", err, fmt.Sprintf("%s: %s was removed", l.Interface, l.Address), "restoring it", "restored it")
	return err == nil
}

// sweepRoute restores l's routes (option 121) that are gone, and its
// default route if there is no IPv4 default route at all: a default route
// the root's own stack set up (through another link, or another gateway)
// is its choice and stays.
func (g *Guard) sweepRoute(l *Lease) {
	routes, err := g.conn.Routes(unix.RT_TABLE_MAIN)
	if err != nil {
		return
	}
	// have reports whether the main table routes to dst, by any link or
	// gateway.
	have := func(dst netip.Prefix) bool {
		return slices.ContainsFunc(routes, func(r rtnl.Route) bool { return r.Dst == dst })
	}
	for _, r := range extraRoutes(l) {
		if have(r.Dst) {
			continue
		}
		if err := g.conn.ReplaceRoute(r); err != nil {
			g.log.Debugf("network", "guard: %s: route to %s: %v", l.Interface, r.Dst, err)
			continue
		}
		g.note("route "+r.Dst.String(), "%s: the route to %s was removed; restored it", l.Interface, r.Dst)
	}
	want, ok := defaultRoute(l)
	if !ok || have(want.Dst) {
		return
	}
	err = g.conn.ReplaceRoute(want)
	if errors.Is(err, unix.ENETUNREACH) {
		// The link is not running yet (just set up, or no carrier): the
		// event that it runs brings the next sweep.
		g.log.Debugf("network", "guard: %s: default route via %s: %v", l.Interface, l.Gateway, err)
		return
	}
	g.restored("route", err, fmt.Sprintf("%s: the default route via %s was removed", l.Interface, l.Gateway), "restoring it", "restored it")
}

// restored notes a restoration of kind: "WHAT; DONE", or, when err says it
// failed, of kind-failed: "WHAT, and DOING failed: ERR".
func (g *Guard) restored(kind string, err error, what, doing, done string) {
	if err != nil {
		g.note(kind+"-failed", "%s, and %s failed: %v", what, doing, err)
		return
	}
	g.note(kind, "%s; %s", what, done)
}

// note logs a restoration of kind, at most once per guardLogEvery, saying
// how many went unlogged since.
func (g *Guard) note(kind, format string, a ...any) {
	g.mu.Lock()
	last := g.logged[kind]
	now := time.Now()
	if !last.at.IsZero() && now.Sub(last.at) < guardLogEvery {
		last.missed++
		g.logged[kind] = last
		g.mu.Unlock()
		return
	}
	g.logged[kind] = guardLog{at: now}
	g.mu.Unlock()
	msg := fmt.Sprintf(format, a...)
	if last.missed > 0 {
		msg += fmt.Sprintf(" (and %d times more since %s)", last.missed, last.at.Format(time.TimeOnly))
	}
	g.log.Printf("network", "guard: %s", msg)
}
