package rtnl

import (
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Subscription is a NETLINK_ROUTE socket in multicast groups
// (unix.RTMGRP_LINK, unix.RTMGRP_IPV4_IFADDR, ...), for a caller that takes
// the kernel's notifications as a cue only and asks for the state itself:
// Wait reads a notification into the same buffer each time and drops it
// undecoded. The socket is read through the Go poller, so that a goroutine
// in Wait holds no thread.
type Subscription struct {
	c *netlink.Conn
	x *exchanger
}

// Subscribe opens a Subscription to the groups.
func Subscribe(groups uint32) (*Subscription, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{Groups: groups})
	if err != nil {
		return nil, &Error{Op: "subscribe", Err: err}
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, &Error{Op: "subscribe", Err: err}
	}
	return &Subscription{c: c, x: newExchanger(raw)}, nil
}

// Wait waits for the next notification and drops it. It fails with
// unix.ENOBUFS when the kernel dropped notifications (the socket's buffer
// overflowed): the caller has missed changes. Once the Subscription is
// closed, Wait fails.
func (s *Subscription) Wait() error {
	if err := s.x.recv(false); err != nil {
		return &Error{Op: "wait for a notification", Err: err}
	}
	return nil
}

// Close closes the socket; a Wait in progress returns.
func (s *Subscription) Close() error { return s.c.Close() }
