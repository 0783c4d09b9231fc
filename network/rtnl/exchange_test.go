package rtnl

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nlmsg is a netlink message as the kernel writes it: header, payload,
// padding to 4 bytes.
func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(nlmsgHdrLen+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 4242) // our port, as the kernel fills it
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// errPayload is an NLMSG_ERROR payload: the code, the request's header,
// and attrs (already encoded).
func errPayload(code int32, reqLen uint32, attrs []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(code))
	b = binary.NativeEndian.AppendUint32(b, reqLen)
	b = append(b, make([]byte, 12)...) // the rest of the request's header
	return append(b, attrs...)
}

// nlattr is one attribute, padded.
func nlattr(typ uint16, v []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestAppendRequest(t *testing.T) {
	m := netlink.Message{Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request}, Data: []byte{1, 2, 3, 4}}
	got := appendRequest([]byte("stale"), m, 7)[5:]
	want := []byte{20, 0, 0, 0, 18, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	if string(got) != string(want) {
		t.Errorf("appendRequest = % x, want % x", got, want)
	}
}

func TestWalk(t *testing.T) {
	const seq = 9
	multi := uint16(netlink.Multi)
	tests := []struct {
		name     string
		b        []byte
		types    []uint16 // the messages passed on, by type
		done     bool
		intr     bool
		err      string // in the error's text; "" for none
		errno    unix.Errno
		extack   string
		extackAt int
	}{
		{name: "one reply", b: nlmsg(unix.RTM_NEWLINK, 0, seq, []byte{1, 2, 3}),
			types: []uint16{unix.RTM_NEWLINK}, done: true},
		{name: "a dump's first datagram", b: cat(nlmsg(unix.RTM_NEWADDR, multi, seq, make([]byte, 8)), nlmsg(unix.RTM_NEWADDR, multi, seq, make([]byte, 8))),
			types: []uint16{unix.RTM_NEWADDR, unix.RTM_NEWADDR}},
		{name: "a dump's last datagram", b: cat(nlmsg(unix.RTM_NEWADDR, multi, seq, make([]byte, 8)), nlmsg(unix.NLMSG_DONE, multi, seq, []byte{0, 0, 0, 0})),
			types: []uint16{unix.RTM_NEWADDR}, done: true},
		{name: "an interrupted dump", b: cat(nlmsg(unix.RTM_NEWROUTE, multi|unix.NLM_F_DUMP_INTR, seq, make([]byte, 12)), nlmsg(unix.NLMSG_DONE, multi|unix.NLM_F_DUMP_INTR, seq, []byte{0, 0, 0, 0})),
			types: []uint16{unix.RTM_NEWROUTE}, done: true, intr: true},
		{name: "a dump that failed", b: nlmsg(unix.NLMSG_DONE, multi, seq, errCode(unix.EINVAL)),
			done: true, err: "invalid argument", errno: unix.EINVAL},
		{name: "an acknowledgement", b: nlmsg(unix.NLMSG_ERROR, 0, seq, errPayload(0, 32, nil)), done: true},
		{name: "a refusal", b: nlmsg(unix.NLMSG_ERROR, 0, seq, errPayload(-int32(unix.ENODEV), 16, nil)),
			done: true, err: "no such device", errno: unix.ENODEV},
		{name: "a refusal with the kernel's reason", b: nlmsg(unix.NLMSG_ERROR, nlmFCapped|nlmFAckTLVs, seq,
			errPayload(-int32(unix.ENETUNREACH), 44, cat(nlattr(nlmsgerrMsg, []byte("Nexthop has invalid gateway\x00")), nlattr(nlmsgerrOffs, []byte{32, 0, 0, 0})))),
			done: true, err: "network is unreachable", errno: unix.ENETUNREACH, extack: "Nexthop has invalid gateway", extackAt: 32},
		{name: "a refusal quoting the request", b: nlmsg(unix.NLMSG_ERROR, nlmFAckTLVs, seq,
			cat(errPayload(-int32(unix.EEXIST), 20, []byte{9, 9, 9, 9}), nlattr(nlmsgerrMsg, []byte("taken\x00")))),
			done: true, err: "file exists", errno: unix.EEXIST, extack: "taken"},
		{name: "another request's answer", b: nlmsg(unix.RTM_NEWLINK, 0, seq+1, nil), done: true, err: "an answer to request 10, not 9"},
		{name: "a short header", b: make([]byte, 10), done: true, err: "shorter than its header"},
		{name: "a length beyond the datagram", b: append(binary.NativeEndian.AppendUint32(nil, 64), make([]byte, 12)...), done: true, err: "a message of 64 bytes in 16"},
		{name: "a short error", b: nlmsg(unix.NLMSG_ERROR, 0, seq, []byte{1}), done: true, err: "payload (1 bytes) is shorter than its 4-byte code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var types []uint16
			done, intr, err := walk(tt.b, seq, func(m netlink.Message) error {
				types = append(types, uint16(m.Header.Type))
				return nil
			})
			if done != tt.done || intr != tt.intr {
				t.Errorf("done, intr = %v, %v, want %v, %v", done, intr, tt.done, tt.intr)
			}
			if !slices.Equal(types, tt.types) {
				t.Errorf("passed on %v, want %v", types, tt.types)
			}
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("error %v, want one saying %q", err, tt.err)
			}
			if tt.errno != 0 {
				var oe *netlink.OpError
				if !errors.As(err, &oe) || !errors.Is(err, tt.errno) || oe.Message != tt.extack || oe.Offset != tt.extackAt {
					t.Errorf("error %#v, want a *netlink.OpError of %v saying %q at %d", err, tt.errno, tt.extack, tt.extackAt)
				}
			}
		})
	}
}

// TestWalkStopsAtEachsError checks that a decoding error ends the walk.
func TestWalkStopsAtEachsError(t *testing.T) {
	b := cat(nlmsg(unix.RTM_NEWADDR, uint16(netlink.Multi), 1, nil), nlmsg(unix.RTM_NEWADDR, uint16(netlink.Multi), 1, nil))
	n := 0
	done, _, err := walk(b, 1, func(netlink.Message) error { n++; return errors.New("bad") })
	if !done || err == nil || n != 1 {
		t.Errorf("done %v, err %v, each called %d times; want true, an error, once", done, err, n)
	}
}

// FuzzWalk feeds arbitrary datagrams to walk, which must not panic, must
// pass on only messages within the datagram, and must end at an error.
func FuzzWalk(f *testing.F) {
	f.Add(nlmsg(unix.RTM_NEWLINK, 0, 1, []byte{1, 2, 3}))
	f.Add(cat(nlmsg(unix.RTM_NEWADDR, uint16(netlink.Multi), 1, make([]byte, 8)), nlmsg(unix.NLMSG_DONE, uint16(netlink.Multi), 1, []byte{0, 0, 0, 0})))
	f.Add(nlmsg(unix.NLMSG_ERROR, nlmFAckTLVs, 1, errPayload(-1, 16, nlattr(nlmsgerrMsg, []byte("why\x00")))))
	f.Add(nlmsg(unix.NLMSG_ERROR, nlmFCapped|nlmFAckTLVs, 1, errPayload(-1, 1<<31, nlattr(nlmsgerrOffs, []byte{1, 2}))))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		total := 0
		done, _, err := walk(b, 1, func(m netlink.Message) error {
			total += nlmsgHdrLen + len(m.Data)
			return nil
		})
		if total > len(b) {
			t.Fatalf("passed on %d bytes of a %d-byte datagram", total, len(b))
		}
		if err != nil && !done {
			t.Fatalf("error %v without the end of the answer", err)
		}
	})
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// errCode is the 4-byte error code the kernel writes for errno.
func errCode(errno unix.Errno) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
}
