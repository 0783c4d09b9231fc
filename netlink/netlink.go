// Package netlink drives the kernel's nbd driver through its generic netlink
// family "nbd" (include/uapi/linux/nbd-netlink.h): connect /dev/nbdN to
// sockets that already finished the NBD handshake, replace dead sockets,
// disconnect, list the devices, and watch for dead links.
//
// Unlike the ioctl interface, NBD_CMD_CONNECT returns as soon as the device is
// started and the kernel holds the sockets itself: no process has to sit in
// NBD_DO_IT, and no signal to a process can tear the device down. The kernel
// keeps its own reference to every socket it is given, so the caller may
// close its descriptors once a request returns.
//
// Reconnecting follows the kernel's model:
//
//   - When a connection breaks, the kernel marks its socket dead and
//     multicasts NBD_CMD_LINK_DEAD with the device index to the group
//     "nbd_mc_group" (WatchLinkDead).
//   - With a dead connection timeout set (Config.DeadConnTimeout), I/O
//     queued on the device waits up to that long for a new socket instead
//     of failing. Requests that were in flight when the link died are
//     resubmitted only when their own timeout (Config.Timeout) expires, so
//     set both.
//   - NBD_CMD_RECONFIGURE (Reconfigure) puts a freshly negotiated socket in
//     the place of a dead one. It replaces only sockets the kernel has
//     already marked dead: sent too early, the kernel drops the new socket
//     and still reports success. Send it after the link-dead event.
//
// A device configured through netlink refuses most ioctls, and
// NBD_CMD_CONNECT fails with EBUSY while the device is connected or merely
// held open by anyone (an open device counts as "connected" in
// NBD_CMD_STATUS).
//
// All requests need CAP_SYS_ADMIN.
package netlink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/nbdroot/nbdroot/nbddev"
	"golang.org/x/sys/unix"
)

// ErrNotSupported is the errors.Is target for a kernel without the "nbd"
// generic netlink family: the nbd module is not loaded, or the kernel was
// built without it.
var ErrNotSupported = errors.New("the kernel has no \"nbd\" generic netlink family (is the nbd module loaded?)")

// requestTimeout bounds the wait for the kernel's answer to one request.
// The kernel answers at once; this only guards against a wedged driver.
const requestTimeout = 30 * time.Second

// Client is one generic netlink connection with the "nbd" family resolved.
// Its methods may be called concurrently; requests are serialised.
type Client struct {
	mu     sync.Mutex // serialises request/answer exchanges on conn
	conn   *netlink.Conn
	family uint16 // generic netlink family ID of "nbd"
	group  uint32 // multicast group ID of "nbd_mc_group"
}

// Dial opens a generic netlink connection and resolves the "nbd" family and
// its multicast group. It returns an error wrapping ErrNotSupported when the
// family does not exist.
func Dial() (*Client, error) {
	conn, err := netlink.Dial(genetlink.Protocol, nil)
	if err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, fmt.Errorf("netlink: dial generic netlink: %w (%w)", ErrNotSupported, err)
		}
		return nil, fmt.Errorf("netlink: dial generic netlink: %w", err)
	}
	// Extended acknowledgements carry the kernel's reason for a refusal
	// when it gives one; kernels without them still work.
	_ = conn.SetOption(netlink.ExtendedAcknowledge, true)
	fam, err := genetlink.NewConn(conn).GetFamily(familyName)
	if err != nil {
		conn.Close()
		return nil, familyError(err)
	}
	group, ok := findGroup(fam.Groups, groupName)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("netlink: family %q has no multicast group %q: %w", familyName, groupName, ErrNotSupported)
	}
	return &Client{conn: conn, family: fam.ID, group: group}, nil
}

// familyError describes a failed lookup of the "nbd" family.
func familyError(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netlink: look up family %q: %w (%w)", familyName, ErrNotSupported, unwrapOp(err))
	}
	return fmt.Errorf("netlink: look up family %q: %w", familyName, unwrapOp(err))
}

// findGroup returns the ID of the multicast group called name.
func findGroup(groups []genetlink.MulticastGroup, name string) (uint32, bool) {
	for _, g := range groups {
		if g.Name == name {
			return g.ID, true
		}
	}
	return 0, false
}

// Close closes the connection. Channels from WatchLinkDead have connections
// of their own and are not affected.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("netlink: close: %w", err)
	}
	return nil
}

// Config is what NBD_CMD_CONNECT tells the kernel.
type Config struct {
	// Index is N of /dev/nbdN; -1 lets the kernel pick an unused device
	// (creating one if all are busy).
	Index int
	// Sockets are connected stream sockets in the NBD transmission phase,
	// one per connection. More than one needs NBD_FLAG_CAN_MULTI_CONN in
	// ServerFlags.
	Sockets []int
	// Size is the device size in bytes (NBD_ATTR_SIZE_BYTES).
	Size uint64
	// BlockSize is the logical block size (a power of two from 512 to the
	// page size); 0 leaves the kernel's default of 1024.
	BlockSize uint64
	// ServerFlags are the export's transmission flags from the handshake.
	ServerFlags uint64
	// ClientFlags are ClientFlagDestroyOnDisconnect and
	// ClientFlagDisconnectOnClose.
	ClientFlags uint64
	// Timeout is the per-request timeout, rounded up to whole seconds; 0
	// keeps the kernel's default. With a timeout set, a request that
	// outlives it marks its connection dead (a link-dead event) and is
	// resubmitted once a connection is available, within DeadConnTimeout.
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits for Reconfigure after every
	// connection died, rounded up to whole seconds; 0 fails such I/O at
	// once. Once it expires, queued and later I/O fails at once until a
	// Reconfigure brings a socket.
	DeadConnTimeout time.Duration
	// BackendID, when set, names the backend in /sys/block/nbdN/backend.
	// The kernel then insists on the same identifier in every Reconfigure.
	BackendID string
}

// Connect configures and starts a device with cfg.Sockets and returns its
// index. The device is live when Connect returns.
func (c *Client) Connect(cfg Config) (int, error) {
	m, err := connectMessage(cfg)
	replies, err := c.command(cmdConnect, cfg.Index, m, err)
	if err != nil {
		return 0, err
	}
	if len(replies) > 0 {
		index, err := decodeIndex(replies[0].Data)
		if err != nil {
			return 0, fmt.Errorf("netlink: NBD_CMD_CONNECT: reply: %w", err)
		}
		return index, nil
	}
	// The kernel sends the reply on a best-effort basis after the device
	// started; without it only a caller-chosen index is known.
	if cfg.Index >= 0 {
		return cfg.Index, nil
	}
	return 0, errors.New("netlink: NBD_CMD_CONNECT: the kernel started a device but sent no reply with its index")
}

// Reconfig is what NBD_CMD_RECONFIGURE changes on a connected device. Zero
// fields are left as they are.
type Reconfig struct {
	// Sockets replace connections the kernel has marked dead, one each, in
	// order. Sockets beyond the number of dead connections are dropped by
	// the kernel without an error.
	Sockets []int
	// Timeout and DeadConnTimeout replace the device's timeouts (rounded
	// up to whole seconds) when positive.
	Timeout, DeadConnTimeout time.Duration
	// ClientFlags, when not nil, replaces the client flags.
	ClientFlags *uint64
	// BackendID must repeat Config.BackendID if the device was connected
	// with one: the kernel refuses a reconfiguration without it.
	BackendID string
}

// Reconfigure changes a device connected through netlink. Its main use is to
// hand the kernel a freshly negotiated socket after a link-dead event.
func (c *Client) Reconfigure(index int, r Reconfig) error {
	m, err := reconfigureMessage(index, r)
	_, err = c.command(cmdReconfigure, index, m, err)
	return err
}

// Disconnect sends NBD_CMD_DISC to the server on every connection, fails
// the requests still queued and stops /dev/nbd<index>.
func (c *Client) Disconnect(index int) error {
	m, err := disconnectMessage(index)
	_, err = c.command(cmdDisconnect, index, m, err)
	return err
}

// LinkDead is an NBD_CMD_LINK_DEAD event: a connection of /dev/nbd<Index>
// broke (the server closed it, a send failed, or a request timed out).
type LinkDead struct {
	// Index is N of /dev/nbdN, or -1 when the kernel dropped events because
	// they were not read fast enough: any device may then have lost a link.
	Index int
}

// WatchLinkDead subscribes to the "nbd_mc_group" multicast group on a
// connection of its own and delivers link-dead events for every nbd device
// until ctx ends. The subscription is in place when WatchLinkDead returns.
// The channel is closed when ctx ends, or earlier if the subscription fails;
// a watcher whose ctx is still live should then watch again.
func (c *Client) WatchLinkDead(ctx context.Context) (<-chan LinkDead, error) {
	conn, err := netlink.Dial(genetlink.Protocol, nil)
	if err != nil {
		return nil, fmt.Errorf("netlink: watch link-dead events: dial: %w", err)
	}
	if err := conn.JoinGroup(c.group); err != nil {
		conn.Close()
		return nil, fmt.Errorf("netlink: watch link-dead events: join group %q: %w", groupName, err)
	}
	ch := make(chan LinkDead, 16)
	go watch(ctx, conn, c.family, ch)
	return ch, nil
}

// watch reads multicast messages from conn until ctx ends or reading fails.
func watch(ctx context.Context, conn *netlink.Conn, family uint16, ch chan<- LinkDead) {
	defer close(ch)
	defer conn.Close()
	// A deadline in the past breaks a blocked Receive.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	send := func(ev LinkDead) bool {
		select {
		case ch <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		msgs, err := conn.Receive()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) && send(LinkDead{Index: -1}) {
				continue
			}
			return
		}
		for _, ev := range linkDeadEvents(msgs, family) {
			if !send(ev) {
				return
			}
		}
	}
}

// linkDeadEvents picks the NBD_CMD_LINK_DEAD events of family out of msgs.
func linkDeadEvents(msgs []netlink.Message, family uint16) []LinkDead {
	var evs []LinkDead
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(family) {
			continue
		}
		var gm genetlink.Message
		if gm.UnmarshalBinary(m.Data) != nil || gm.Header.Command != cmdLinkDead {
			continue
		}
		index, err := decodeIndex(gm.Data)
		if err != nil {
			continue
		}
		evs = append(evs, LinkDead{Index: index})
	}
	return evs
}

// command sends m, the request for cmd on the device at index, and returns
// the replies to it. err is the error from encoding m: when set, it is
// returned, naming cmd, and nothing is sent.
func (c *Client) command(cmd uint8, index int, m genetlink.Message, err error) ([]genetlink.Message, error) {
	if err != nil {
		return nil, fmt.Errorf("netlink: %s: %w", cmdName(cmd), err)
	}
	replies, err := c.execute(m)
	if err != nil {
		return nil, commandError(cmd, index, err)
	}
	return replies, nil
}

// execute sends m as a request with an acknowledgement and collects the
// replies to m's command until the acknowledgement (or the error) arrives.
// Acknowledging every request lets commands without a reply
// (DISCONNECT, RECONFIGURE) and commands with one (CONNECT, STATUS) be read
// the same way; answers to an earlier request are skipped by sequence number.
func (c *Client) execute(m genetlink.Message) ([]genetlink.Message, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	req, err := c.conn.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(c.family), Flags: netlink.Request | netlink.Acknowledge},
		Data:   b,
	})
	if err != nil {
		return nil, err
	}
	// Best effort: a connection without deadlines (a test double) waits.
	if c.conn.SetReadDeadline(time.Now().Add(requestTimeout)) == nil {
		defer c.conn.SetReadDeadline(time.Time{})
	}
	var replies []genetlink.Message
	for {
		msgs, err := c.conn.Receive()
		if err != nil {
			var oe *netlink.OpError
			if errors.As(err, &oe) && oe.Sequence != 0 && oe.Sequence != req.Header.Sequence {
				continue // the late error of an earlier request
			}
			return nil, err
		}
		for _, nm := range msgs {
			if nm.Header.Sequence != req.Header.Sequence {
				continue
			}
			switch nm.Header.Type {
			case netlink.Error:
				// The acknowledgement comes after the replies.
				return replies, nil
			case netlink.HeaderType(c.family):
				var gm genetlink.Message
				if err := gm.UnmarshalBinary(nm.Data); err != nil {
					return nil, fmt.Errorf("malformed reply: %w", err)
				}
				if gm.Header.Command == m.Header.Command {
					replies = append(replies, gm)
				}
			}
		}
	}
}

// cmdName names a command for messages.
func cmdName(cmd uint8) string {
	switch cmd {
	case cmdConnect:
		return "NBD_CMD_CONNECT"
	case cmdDisconnect:
		return "NBD_CMD_DISCONNECT"
	case cmdReconfigure:
		return "NBD_CMD_RECONFIGURE"
	case cmdLinkDead:
		return "NBD_CMD_LINK_DEAD"
	case cmdStatus:
		return "NBD_CMD_STATUS"
	}
	return "NBD_CMD_" + strconv.Itoa(int(cmd))
}

// unwrapOp strips the *netlink.OpError wrapper ("netlink receive: ...") off
// err, keeping the kernel's extended-acknowledgement message if any.
func unwrapOp(err error) error {
	var oe *netlink.OpError
	if !errors.As(err, &oe) || oe.Err == nil {
		return err
	}
	if oe.Message != "" {
		return fmt.Errorf("%w (kernel: %s)", oe.Err, oe.Message)
	}
	return oe.Err
}

// CommandError is a request the kernel refused, as in "netlink:
// NBD_CMD_CONNECT /dev/nbd0: device is in use (...): device or resource
// busy". The errno stays available to errors.Is.
type CommandError struct {
	// Cmd is the command's name (NBD_CMD_CONNECT, ...).
	Cmd string
	// Device is the device's path, "all devices" or "a free device".
	Device string
	// Hint says what the error means for the device, if known.
	Hint string
	Err  error
}

func (e *CommandError) Error() string {
	s := "netlink: " + e.Cmd + " " + e.Device + ": "
	if e.Hint != "" {
		s += e.Hint + ": "
	}
	return s + e.Err.Error()
}

func (e *CommandError) Unwrap() error { return e.Err }

// commandError says what a refused request means for the device at index
// (-1: none given).
func commandError(cmd uint8, index int, err error) error {
	e := &CommandError{Cmd: cmdName(cmd), Device: nbddev.Path(index), Err: unwrapOp(err)}
	if index < 0 {
		e.Device = "all devices"
		if cmd == cmdConnect {
			e.Device = "a free device"
		}
	}
	switch err := e.Err; {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		// The family went away (module unloaded) or lacks the command.
		e.Err = fmt.Errorf("%w (%w)", ErrNotSupported, err)
	case errors.Is(err, unix.EPERM):
		e.Hint = "permission denied (needs CAP_SYS_ADMIN)"
	case errors.Is(err, unix.EBUSY) && cmd == cmdConnect:
		e.Hint = "device is in use (connected, or held open by another process)"
	case errors.Is(err, unix.EINVAL):
		switch cmd {
		case cmdConnect:
			e.Hint = "the kernel refused the configuration (its log says why)"
		case cmdReconfigure:
			e.Hint = "no such device, not connected through netlink, or a backend identifier mismatch (the kernel log says which)"
		case cmdDisconnect:
			e.Hint = "no such device, or it is going away"
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		e.Hint = "no answer from the kernel within " + requestTimeout.String()
	}
	return e
}
