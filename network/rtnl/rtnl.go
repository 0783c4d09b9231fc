// Package rtnl is the small rtnetlink client of the network step and the
// keeper's guard: list and look up links, set a link up, rename it, set its
// MTU, list, replace and delete its IPv4 addresses, and list and replace
// IPv4 routes, and wake at its notifications (Subscribe). That is all
// nbdroot asks of rtnetlink, and it is built on github.com/mdlayher/
// netlink's sockets and records, so that one netlink library serves the
// whole binary (package netlink drives the nbd driver with it too); the
// requests and answers themselves go through the socket's raw connection,
// into buffers a Conn reuses (exchange.go).
//
// Every function opens its own NETLINK_ROUTE socket, makes one request and
// closes the socket: there is no state to share, and the functions may be
// called from any goroutine. A Conn (Dial) makes the same requests on one
// socket it keeps, for a caller that asks again and again (the keeper's
// guard), without opening a socket and its poller registration each time,
// and with buffers it reuses.
// A failed request returns an *Error, through which errors.Is finds the
// kernel's errno (unix.ENODEV, unix.EEXIST, unix.ENETUNREACH, ...). Most
// requests need CAP_NET_ADMIN.
//
// Only IPv4 is handled: nbdroot configures the root's network with DHCPv4
// or a static IPv4 address.
package rtnl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// requestTimeout bounds one request, answer included. The kernel answers at
// once unless something holds the rtnl lock for long (a wedged driver); the
// caller then gets an error instead of hanging.
const requestTimeout = 30 * time.Second

// dumpTries is how often a dump is tried while the kernel reports it
// interrupted (NLM_F_DUMP_INTR: the list changed while it was being read).
const dumpTries = 4

// Forever is the lifetime of an address that does not expire (the kernel's
// INFINITY_LIFE_TIME).
const Forever uint32 = 0xffffffff

// Error is a failed rtnetlink request: Op is what was asked ("set up",
// "list addresses", ...), Link the link's name, or "index N" when only its
// index is known, and empty when the request is about no one link.
type Error struct {
	Op   string
	Link string
	Err  error
}

// Error returns "rtnetlink: LINK: OP: ERR", e.g. "rtnetlink: eth0: set up:
// operation not permitted", with the kernel's extended acknowledgement
// message, if it gave one, in parentheses.
func (e *Error) Error() string {
	s := "rtnetlink: "
	if e.Link != "" {
		s += e.Link + ": "
	}
	return s + e.Op + ": " + errText(e.Err)
}

// Unwrap returns the underlying error: errors.Is(err, unix.ENODEV) and the
// like see through both it and the *netlink.OpError it usually is.
func (e *Error) Unwrap() error { return e.Err }

// errText is err without the "netlink receive: " that *netlink.OpError
// prepends: the Error already says what was asked.
func errText(err error) string {
	var oe *netlink.OpError
	if !errors.As(err, &oe) || oe.Err == nil {
		return fmt.Sprint(err)
	}
	s := oe.Err.Error()
	if oe.Message != "" {
		s += " (" + oe.Message + ")"
	}
	return s
}

// indexName is how an Error names a link known by its index only.
func indexName(index int) string { return "index " + strconv.Itoa(index) }

// Link is a network interface as RTM_NEWLINK describes it.
type Link struct {
	Index        int
	Name         string
	Flags        uint32           // IFF_* (ifi_flags): unix.IFF_UP, unix.IFF_LOOPBACK, unix.IFF_LOWER_UP, ...
	MTU          int              // IFLA_MTU
	HardwareAddr net.HardwareAddr // IFLA_ADDRESS, nil if the link has none
}

// Up reports whether the link is administratively up (IFF_UP).
func (l Link) Up() bool { return l.Flags&unix.IFF_UP != 0 }

// Loopback reports whether the link is a loopback device (IFF_LOOPBACK).
func (l Link) Loopback() bool { return l.Flags&unix.IFF_LOOPBACK != 0 }

// Addr is an IPv4 address on a link.
type Addr struct {
	Index int // the link's index

	// Prefix is the address and its prefix length, e.g. 10.9.0.2/24 (the
	// host bits are kept).
	Prefix netip.Prefix

	// ValidLft and PreferredLft are the lifetimes in seconds, Forever for
	// a permanent address. ReplaceAddr takes a ValidLft of 0 for Forever
	// and a PreferredLft of 0 for ValidLft; like the kernel, it refuses a
	// PreferredLft beyond ValidLft.
	ValidLft     uint32
	PreferredLft uint32
}

// Route is an IPv4 unicast route.
type Route struct {
	Index int // RTA_OIF, the outgoing link; 0 for none

	// Dst is the destination, 0.0.0.0/0 for the default route. It must be a
	// valid IPv4 prefix without host bits (the kernel refuses them);
	// Routes reports it so.
	Dst netip.Prefix

	// Gateway is the next hop, the zero Addr for none (an on-link route).
	// ReplaceRoute takes an IPv4-mapped IPv6 address as the IPv4 one.
	Gateway netip.Addr

	// Scope is unix.RT_SCOPE_UNIVERSE (0), or unix.RT_SCOPE_LINK for an
	// on-link route.
	Scope uint8

	// Table is the routing table. ReplaceRoute takes 0 for
	// unix.RT_TABLE_MAIN; Routes reports the table the kernel names.
	Table uint32
}

// Links lists the links, in the order the kernel lists them (by index on
// current kernels).
func Links() ([]Link, error) { return with(func(c *Conn) ([]Link, error) { return c.Links() }) }

// Links is the package's Links on c.
func (c *Conn) Links() ([]Link, error) {
	const op = "list links"
	var out []Link
	err := c.dump(op, "", listLinksMessage, func() { out = out[:0] }, func(m netlink.Message) error {
		if m.Header.Type != unix.RTM_NEWLINK {
			return nil
		}
		l, err := parseLink(m.Data)
		out = append(out, l)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// LinkByIndex returns the link with the index; when there is none, the
// error satisfies errors.Is(err, unix.ENODEV).
func LinkByIndex(index int) (Link, error) {
	return with(func(c *Conn) (Link, error) { return c.LinkByIndex(index) })
}

// LinkByIndex is the package's LinkByIndex on c.
func (c *Conn) LinkByIndex(index int) (Link, error) {
	return c.getLink(indexName(index), index, "")
}

// LinkByName returns the link with the name (or alternative name); when
// there is none, the error satisfies errors.Is(err, unix.ENODEV). A name no
// link can have (empty, or longer than 15 bytes) is an error without asking
// the kernel.
func LinkByName(name string) (Link, error) {
	return with(func(c *Conn) (Link, error) { return c.LinkByName(name) })
}

// LinkByName is the package's LinkByName on c.
func (c *Conn) LinkByName(name string) (Link, error) {
	return c.getLink(name, 0, name)
}

// getLink makes an RTM_GETLINK request for the index, or else the name.
func (c *Conn) getLink(link string, index int, name string) (Link, error) {
	const op = "get link"
	m, err := getLinkMessage(index, name)
	if err != nil {
		return Link{}, &Error{Op: op, Link: link, Err: err}
	}
	var l Link
	found := false
	err = c.execute(op, link, m, func(m netlink.Message) error {
		if m.Header.Type != unix.RTM_NEWLINK || found {
			return nil
		}
		found = true
		var perr error
		l, perr = parseLink(m.Data)
		return perr
	})
	switch {
	case err != nil:
		return Link{}, err
	case !found:
		return Link{}, &Error{Op: op, Link: link, Err: errors.New("the kernel's answer has no link")}
	}
	return l, nil
}

// SetUp sets the link up (IFF_UP).
func SetUp(index int) error { return do(func(c *Conn) error { return c.SetUp(index) }) }

// SetUp is the package's SetUp on c.
func (c *Conn) SetUp(index int) error {
	return c.set("set up", index, func() (netlink.Message, error) { return setUpMessage(index) })
}

// SetName renames the link. The kernel refuses a name that is taken
// (EEXIST); kernels before Linux 6.2 also refuse to rename a link that is
// up (EBUSY).
func SetName(index int, name string) error {
	return do(func(c *Conn) error { return c.SetName(index, name) })
}

// SetName is the package's SetName on c.
func (c *Conn) SetName(index int, name string) error {
	return c.set("set name "+name, index, func() (netlink.Message, error) { return setNameMessage(index, name) })
}

// SetMTU sets the link's MTU.
func SetMTU(index, mtu int) error { return do(func(c *Conn) error { return c.SetMTU(index, mtu) }) }

// SetMTU is the package's SetMTU on c.
func (c *Conn) SetMTU(index, mtu int) error {
	return c.set("set MTU "+strconv.Itoa(mtu), index, func() (netlink.Message, error) { return setMTUMessage(index, mtu) })
}

// set makes the RTM_NEWLINK request that msg builds for the link.
func (c *Conn) set(op string, index int, msg func() (netlink.Message, error)) error {
	m, err := msg()
	if err != nil {
		return &Error{Op: op, Link: indexName(index), Err: err}
	}
	return c.execute(op, indexName(index), m, ignore)
}

// Addrs lists the IPv4 addresses of the link with the index.
func Addrs(index int) ([]Addr, error) {
	return with(func(c *Conn) ([]Addr, error) { return c.Addrs(index) })
}

// Addrs is the package's Addrs on c.
func (c *Conn) Addrs(index int) ([]Addr, error) {
	const op = "list addresses"
	if err := checkIndex(index); err != nil {
		return nil, &Error{Op: op, Link: indexName(index), Err: err}
	}
	var out []Addr
	err := c.dump(op, indexName(index), listAddrsMessage, func() { out = out[:0] }, func(m netlink.Message) error {
		if m.Header.Type != unix.RTM_NEWADDR {
			return nil
		}
		a, ok, err := parseAddr(m.Data)
		// The kernel dumps every link's addresses: it heeds ifa_index
		// only on a socket with NETLINK_GET_STRICT_CHK.
		if ok && a.Index == index {
			out = append(out, a)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ReplaceAddr adds the address to its link, or updates its lifetimes if the
// link has it already. Like iproute2's "brd +", it sets the broadcast
// address (host bits all set) of a prefix shorter than /31.
func ReplaceAddr(a Addr) error { return do(func(c *Conn) error { return c.ReplaceAddr(a) }) }

// ReplaceAddr is the package's ReplaceAddr on c.
func (c *Conn) ReplaceAddr(a Addr) error {
	op := "replace address " + a.Prefix.String()
	m, err := replaceAddrMessage(a)
	if err != nil {
		return &Error{Op: op, Link: indexName(a.Index), Err: err}
	}
	return c.execute(op, indexName(a.Index), m, ignore)
}

// DelAddr removes the address from its link; only Index and Prefix matter.
// When the link does not have it, the error satisfies
// errors.Is(err, unix.EADDRNOTAVAIL).
func DelAddr(a Addr) error { return do(func(c *Conn) error { return c.DelAddr(a) }) }

// DelAddr is the package's DelAddr on c.
func (c *Conn) DelAddr(a Addr) error {
	op := "delete address " + a.Prefix.String()
	m, err := delAddrMessage(a)
	if err != nil {
		return &Error{Op: op, Link: indexName(a.Index), Err: err}
	}
	return c.execute(op, indexName(a.Index), m, ignore)
}

// Routes lists the IPv4 unicast routes of the table (0 for
// unix.RT_TABLE_MAIN). Local, broadcast and other route types are left
// out, so the local table's routes never appear.
func Routes(table uint32) ([]Route, error) {
	return with(func(c *Conn) ([]Route, error) { return c.Routes(table) })
}

// Routes is the package's Routes on c.
func (c *Conn) Routes(table uint32) ([]Route, error) {
	const op = "list routes"
	if table == 0 {
		table = unix.RT_TABLE_MAIN
	}
	var out []Route
	err := c.dump(op, "", listRoutesMessage, func() { out = out[:0] }, func(m netlink.Message) error {
		if m.Header.Type != unix.RTM_NEWROUTE {
			return nil
		}
		r, ok, err := parseRoute(m.Data)
		// The kernel dumps every table without NETLINK_GET_STRICT_CHK.
		if ok && r.Table == table {
			out = append(out, r)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ReplaceRoute adds the route, or replaces the one of its table with the
// same destination. The kernel refuses a gateway it cannot reach through
// the link, e.g. while the link has no carrier, with ENETUNREACH.
func ReplaceRoute(r Route) error { return do(func(c *Conn) error { return c.ReplaceRoute(r) }) }

// ReplaceRoute is the package's ReplaceRoute on c.
func (c *Conn) ReplaceRoute(r Route) error {
	op := "replace route " + r.Dst.String()
	if r.Gateway.IsValid() {
		op += " via " + r.Gateway.Unmap().String()
	}
	link := ""
	if r.Index != 0 {
		link = indexName(r.Index)
	}
	m, err := replaceRouteMessage(r)
	if err != nil {
		return &Error{Op: op, Link: link, Err: err}
	}
	return c.execute(op, link, m, ignore)
}

// Conn is a NETLINK_ROUTE socket kept for many requests. Its methods are
// the package's functions; they take turns, so a Conn may be shared
// between goroutines. A request the kernel refuses leaves the socket as it
// is; one that fails otherwise (a timeout, an answer out of sequence)
// closes it, and the next request opens a new one.
type Conn struct {
	mu sync.Mutex
	c  *netlink.Conn // nil after a failure, until the next request
	x  *exchanger    // c's raw half
}

// Dial opens a Conn.
func Dial() (*Conn, error) {
	c := &Conn{}
	if err := c.open(); err != nil {
		return nil, &Error{Op: "open socket", Err: err}
	}
	return c, nil
}

// open opens c's socket.
func (c *Conn) open() error {
	nc, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return err
	}
	// Extended acknowledgements carry the kernel's reason for a refusal
	// when it gives one; kernels without them still work.
	_ = nc.SetOption(netlink.ExtendedAcknowledge, true)
	raw, err := nc.SyscallConn()
	if err != nil {
		nc.Close()
		return err
	}
	c.c, c.x = nc, newExchanger(raw)
	return nil
}

// Close closes the socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		return nil
	}
	err := c.c.Close()
	c.c, c.x = nil, nil
	return err
}

// with runs fn on a Conn of its own. The socket opens at fn's request, so
// that failing to open it is an *Error naming the request.
func with[T any](fn func(*Conn) (T, error)) (T, error) {
	c := &Conn{}
	defer c.Close()
	return fn(c)
}

// do is with for a request that returns only an error.
func do(fn func(*Conn) error) error {
	_, err := with(func(c *Conn) (struct{}, error) { return struct{}{}, fn(c) })
	return err
}

// execute sends m and passes each message of the kernel's answer to each,
// within requestTimeout, errors wrapped in an *Error for op on link. The
// messages are in the Conn's buffer: each decodes what it keeps.
func (c *Conn) execute(op, link string, m netlink.Message, each func(netlink.Message) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.exchangeLocked(m, each); err != nil {
		return &Error{Op: op, Link: link, Err: err}
	}
	return nil
}

// ignore is execute's each for a request answered by an acknowledgement.
func ignore(netlink.Message) error { return nil }

// exchangeLocked is one request and its answer, within requestTimeout;
// intr says the kernel flagged a dump interrupted. An error that is not the
// kernel's answer (an errno) drops the socket, which may still hold the
// rest of the answer.
func (c *Conn) exchangeLocked(m netlink.Message, each func(netlink.Message) error) (intr bool, err error) {
	if c.c == nil {
		if err := c.open(); err != nil {
			return false, err
		}
	}
	if err := c.c.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return false, err
	}
	intr, err = c.x.exchange(m, each)
	var errno unix.Errno
	if err != nil && !errors.As(err, &errno) {
		c.c.Close()
		c.c, c.x = nil, nil
	}
	return intr, err
}

// dump is execute for the dump request that build builds: it asks again
// while the kernel reports the dump interrupted by a change, calling start
// before each try (to forget what the last one passed to each).
func (c *Conn) dump(op, link string, build func() (netlink.Message, error), start func(), each func(netlink.Message) error) error {
	m, err := build()
	if err != nil {
		return &Error{Op: op, Link: link, Err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for range dumpTries {
		start()
		intr, err := c.exchangeLocked(m, each)
		if err != nil {
			return &Error{Op: op, Link: link, Err: err}
		}
		if !intr {
			return nil
		}
	}
	return &Error{Op: op, Link: link, Err: fmt.Errorf("the kernel interrupted the dump %d times (the list kept changing)", dumpTries)}
}
