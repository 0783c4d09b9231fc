package netlink

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

const testFamily = 0x1c // an arbitrary family ID for the fake kernel

// answer is one datagram of the fake kernel: a reply of the family, an
// acknowledgement (errno 0) or an error (errno > 0).
type answer struct {
	reply *genetlink.Message
	errno int
	// seqDelta shifts the sequence number: nonzero makes the answer look
	// like a late answer to an earlier request.
	seqDelta int
}

// fakeKernel returns a Client whose requests are answered by kernel, one
// datagram per Receive, as the real kernel does. Every request it saw is
// appended to *seen.
func fakeKernel(t *testing.T, kernel func(req genetlink.Message) []answer, seen *[]netlink.Message) *Client {
	t.Helper()
	var (
		mu      sync.Mutex
		pending []netlink.Message
	)
	conn := nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, req := range reqs {
			if seen != nil {
				*seen = append(*seen, req)
			}
			var gm genetlink.Message
			if err := gm.UnmarshalBinary(req.Data); err != nil {
				t.Errorf("request is not generic netlink: %v", err)
				return nil, err
			}
			for _, a := range kernel(gm) {
				h := netlink.Header{Type: netlink.Error, Sequence: req.Header.Sequence + uint32(a.seqDelta), PID: req.Header.PID}
				var data []byte
				if a.reply != nil {
					h.Type = netlink.HeaderType(testFamily)
					data, _ = a.reply.MarshalBinary()
				} else {
					// struct nlmsgerr: the negative errno, then the
					// request's header.
					data = append(nlenc.Int32Bytes(int32(-a.errno)), make([]byte, 16)...)
				}
				pending = append(pending, netlink.Message{Header: h, Data: data})
			}
		}
		if len(pending) == 0 {
			return nil, io.EOF
		}
		next := pending[0]
		pending = pending[1:]
		return []netlink.Message{next}, nil
	})
	return &Client{conn: conn, family: testFamily, group: 3}
}

// replyOf builds a reply message of cmd with the attributes in hex.
func replyOf(t *testing.T, cmd uint8, attrs string) *genetlink.Message {
	return &genetlink.Message{Header: genetlink.Header{Command: cmd, Version: version}, Data: unhex(t, attrs)}
}

func TestClientConnect(t *testing.T) {
	littleEndian(t)
	var seen []netlink.Message
	c := fakeKernel(t, func(req genetlink.Message) []answer {
		if req.Header.Command != cmdConnect || req.Header.Version != version {
			t.Errorf("request header %+v, want NBD_CMD_CONNECT version 1", req.Header)
		}
		return []answer{{reply: replyOf(t, cmdConnect, `0800 0100 07000000`)}, {}}
	}, &seen)
	index, err := c.Connect(Config{Index: -1, Sockets: []int{4}, Size: 1 << 20})
	if err != nil || index != 7 {
		t.Fatalf("Connect = %d, %v; want 7", index, err)
	}
	if len(seen) != 1 {
		t.Fatalf("%d requests sent, want 1", len(seen))
	}
	if h := seen[0].Header; h.Type != testFamily || h.Flags != netlink.Request|netlink.Acknowledge {
		t.Fatalf("request header %+v, want type %#x, flags request|acknowledge", h, testFamily)
	}
	want, _ := connectMessage(Config{Index: -1, Sockets: []int{4}, Size: 1 << 20})
	wb, _ := want.MarshalBinary()
	if string(seen[0].Data) != string(wb) {
		t.Fatalf("request %x, want %x", seen[0].Data, wb)
	}
}

func TestClientConnectWithoutReply(t *testing.T) {
	ackOnly := func(genetlink.Message) []answer { return []answer{{}} }
	c := fakeKernel(t, ackOnly, nil)
	if index, err := c.Connect(Config{Index: 5, Sockets: []int{4}, Size: 4096}); err != nil || index != 5 {
		t.Errorf("Connect(index 5) without reply = %d, %v; want 5", index, err)
	}
	if _, err := c.Connect(Config{Index: -1, Sockets: []int{4}, Size: 4096}); err == nil || !strings.Contains(err.Error(), "no reply") {
		t.Errorf("Connect(index -1) without reply: error %v, want \"no reply\"", err)
	}
}

func TestClientSkipsLateAnswers(t *testing.T) {
	littleEndian(t)
	c := fakeKernel(t, func(req genetlink.Message) []answer {
		return []answer{
			{errno: int(unix.EBUSY), seqDelta: -1}, // an earlier request's error
			{reply: replyOf(t, cmdConnect, `0800 0100 09000000`), seqDelta: -1},
			{seqDelta: -1},
			{reply: replyOf(t, cmdStatus, `1800 0900 1400 0100 0800 0100 02000000 0500 0200 01000000`)},
			{},
		}
	}, nil)
	got, err := c.Status(2)
	if err != nil || len(got) != 1 || got[0] != (DeviceStatus{Index: 2, Connected: true}) {
		t.Fatalf("Status = %+v, %v; want [{2 true}]", got, err)
	}
}

func TestClientStatusAll(t *testing.T) {
	littleEndian(t)
	c := fakeKernel(t, func(req genetlink.Message) []answer {
		if len(req.Data) != 0 {
			t.Errorf("status of all devices sent attributes %x", req.Data)
		}
		return []answer{{reply: replyOf(t, cmdStatus, `2c00 0900`+
			`1400 0100 0800 0100 00000000 0500 0200 00000000`+
			`1400 0100 0800 0100 01000000 0500 0200 01000000`)}, {}}
	}, nil)
	got, err := c.Status(-1)
	if err != nil || len(got) != 2 || got[0] != (DeviceStatus{0, false}) || got[1] != (DeviceStatus{1, true}) {
		t.Fatalf("Status(-1) = %+v, %v", got, err)
	}
}

func TestClientErrors(t *testing.T) {
	conn := Config{Index: 3, Sockets: []int{4}, Size: 4096}
	tests := []struct {
		name  string
		errno unix.Errno
		call  func(c *Client) error
		is    []error
		want  []string
	}{
		{
			name: "connect busy", errno: unix.EBUSY,
			call: func(c *Client) error { _, err := c.Connect(conn); return err },
			is:   []error{unix.EBUSY},
			want: []string{"NBD_CMD_CONNECT /dev/nbd3", "in use", "device or resource busy"},
		},
		{
			name: "connect refused", errno: unix.EINVAL,
			call: func(c *Client) error { _, err := c.Connect(conn); return err },
			is:   []error{unix.EINVAL},
			want: []string{"refused the configuration"},
		},
		{
			name: "connect without privilege", errno: unix.EPERM,
			call: func(c *Client) error { _, err := c.Connect(conn); return err },
			is:   []error{unix.EPERM},
			want: []string{"CAP_SYS_ADMIN"},
		},
		{
			name: "reconfigure refused", errno: unix.EINVAL,
			call: func(c *Client) error { return c.Reconfigure(2, Reconfig{Sockets: []int{5}}) },
			is:   []error{unix.EINVAL},
			want: []string{"NBD_CMD_RECONFIGURE /dev/nbd2", "not connected through netlink"},
		},
		{
			name: "disconnect of a missing device", errno: unix.EINVAL,
			call: func(c *Client) error { return c.Disconnect(40) },
			is:   []error{unix.EINVAL},
			want: []string{"NBD_CMD_DISCONNECT /dev/nbd40", "no such device"},
		},
		{
			name: "family gone", errno: unix.ENOENT,
			call: func(c *Client) error { _, err := c.Status(-1); return err },
			is:   []error{ErrNotSupported, unix.ENOENT},
			want: []string{"NBD_CMD_STATUS all devices", "nbd module"},
		},
		{
			name: "command unknown to the kernel", errno: unix.EOPNOTSUPP,
			call: func(c *Client) error { return c.Disconnect(0) },
			is:   []error{ErrNotSupported, unix.EOPNOTSUPP},
		},
		{
			name: "other errno passes through", errno: unix.ENOMEM,
			call: func(c *Client) error {
				_, err := c.Connect(Config{Index: -1, Sockets: []int{4}, Size: 4096})
				return err
			},
			is:   []error{unix.ENOMEM},
			want: []string{"NBD_CMD_CONNECT a free device: cannot allocate memory"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fakeKernel(t, func(genetlink.Message) []answer { return []answer{{errno: int(tt.errno)}} }, nil)
			err := tt.call(c)
			if err == nil {
				t.Fatal("no error")
			}
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("error %q is not %v", err, target)
				}
			}
			if tt.errno != unix.ENOENT && tt.errno != unix.EOPNOTSUPP && errors.Is(err, ErrNotSupported) {
				t.Errorf("error %q is ErrNotSupported", err)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestFamilyError(t *testing.T) {
	err := familyError(&netlink.OpError{Op: "receive", Err: unix.ENOENT})
	if !errors.Is(err, ErrNotSupported) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("family lookup ENOENT: %q is not ErrNotSupported and ENOENT", err)
	}
	if strings.Contains(err.Error(), "netlink receive") {
		t.Errorf("family lookup error %q keeps the OpError wrapper", err)
	}
	err = familyError(&netlink.OpError{Op: "receive", Err: unix.EPERM})
	if errors.Is(err, ErrNotSupported) || !errors.Is(err, unix.EPERM) {
		t.Errorf("family lookup EPERM: %q", err)
	}
}

func TestUnwrapOpKeepsKernelMessage(t *testing.T) {
	err := commandError(cmdConnect, 1, &netlink.OpError{Op: "receive", Err: unix.EINVAL, Message: "attribute has wrong length"})
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "kernel: attribute has wrong length") {
		t.Errorf("error %q lost the errno or the kernel's message", err)
	}
}

func TestFindGroup(t *testing.T) {
	groups := []genetlink.MulticastGroup{{ID: 4, Name: "other"}, {ID: 9, Name: groupName}}
	if id, ok := findGroup(groups, groupName); !ok || id != 9 {
		t.Errorf("findGroup = %d, %v; want 9", id, ok)
	}
	if _, ok := findGroup(groups[:1], groupName); ok {
		t.Error("findGroup found a missing group")
	}
}

func TestWatch(t *testing.T) {
	littleEndian(t)
	linkDead := func(cmd uint8, attrs string, typ netlink.HeaderType) netlink.Message {
		b, _ := replyOf(t, cmd, attrs).MarshalBinary()
		return netlink.Message{Header: netlink.Header{Type: typ}, Data: b}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	conn := nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
		calls++
		switch calls {
		case 1:
			return []netlink.Message{
				linkDead(cmdLinkDead, `0800 0100 03000000`, testFamily),
				linkDead(cmdLinkDead, `0800 0100 04000000`, testFamily+1), // another family
				linkDead(cmdStatus, `0800 0100 05000000`, testFamily),     // another command
				linkDead(cmdLinkDead, ``, testFamily),                     // no index
				linkDead(cmdLinkDead, `0800 0100 06000000`, testFamily),
			}, nil
		case 2:
			return nil, unix.ENOBUFS // the kernel dropped events
		}
		<-ctx.Done()
		return nil, errors.New("closed")
	})
	ch := make(chan LinkDead)
	go watch(ctx, conn, testFamily, ch)
	for _, want := range []int{3, 6, -1} {
		select {
		case ev, ok := <-ch:
			if !ok || ev.Index != want {
				t.Fatalf("event %+v (open %v), want index %d", ev, ok, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no event, want index %d", want)
		}
	}
	cancel()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("event %+v after cancel, want the channel closed", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}

func TestWatchEndsOnReceiveError(t *testing.T) {
	conn := nltest.Dial(func([]netlink.Message) ([]netlink.Message, error) {
		return nil, errors.New("socket broke")
	})
	ch := make(chan LinkDead)
	go watch(context.Background(), conn, testFamily, ch)
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("event %+v, want the channel closed", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after a receive error")
	}
}

func TestCommandErrorMessage(t *testing.T) {
	for _, tc := range []struct {
		cmd   uint8
		index int
		err   error
		want  string
	}{
		{cmdConnect, 1, unix.EBUSY, "netlink: NBD_CMD_CONNECT /dev/nbd1: device is in use (connected, or held open by another process): device or resource busy"},
		{cmdConnect, -1, unix.ENOENT, "netlink: NBD_CMD_CONNECT a free device: " + ErrNotSupported.Error() + " (no such file or directory)"},
		{cmdDisconnect, 2, unix.EIO, "netlink: NBD_CMD_DISCONNECT /dev/nbd2: input/output error"},
	} {
		err := commandError(tc.cmd, tc.index, tc.err)
		var ce *CommandError
		if !errors.As(err, &ce) || err.Error() != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("commandError(%d, %d, %v) = %q, want a *CommandError %q wrapping the errno", tc.cmd, tc.index, tc.err, err, tc.want)
		}
	}
}
