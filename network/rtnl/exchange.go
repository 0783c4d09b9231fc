package rtnl

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A Conn's exchanges (one request, the kernel's answer) reuse the Conn's
// buffers and hand the answer's messages, in place, to a function that
// decodes them, so that asking the kernel the same things again and again
// (the keeper's guard sweeps for as long as the system runs) leaves little
// garbage behind. Package netlink's Execute allocates a receive buffer, a
// copy of every message and more each time: a sweep (three requests) left
// 14 KiB on the host that way and leaves 2.6 KiB this way, most of it the
// decoding (package netlink's attribute decoder copies each attribute).
//
// The socket is still package netlink's (its Dial, options and the Go
// poller's deadlines); only the reads and writes go through its raw
// connection.

// answerBufSize is the receive buffer a Conn starts with. A datagram the
// kernel makes bigger (one huge link message) grows it.
const answerBufSize = 16 << 10

// Netlink's message header, and the error message's flags from
// include/uapi/linux/netlink.h that package netlink does not name.
const (
	nlmsgHdrLen  = unix.SizeofNlMsghdr // 16
	nlmFCapped   = 0x100               // NLM_F_CAPPED: the error omits the request's payload
	nlmFAckTLVs  = 0x200               // NLM_F_ACK_TLVS: extended acknowledgement attributes follow
	nlmsgerrMsg  = 1                   // NLMSGERR_ATTR_MSG
	nlmsgerrOffs = 2                   // NLMSGERR_ATTR_OFFS
)

// exchanger is the raw half of a Conn: its socket's raw connection, its
// buffers, and the read and write functions given to the raw connection,
// made once so that an exchange allocates nothing.
type exchanger struct {
	raw  syscall.RawConn
	seq  uint32
	req  []byte // the request being sent
	buf  []byte // the datagram being read
	n    int    // its length, as the kernel gave it (more than len(buf) if truncated)
	peek bool   // read with MSG_PEEK
	err  error  // the last read's or write's error

	read, write func(fd uintptr) bool
}

// newExchanger returns an exchanger on the raw connection.
func newExchanger(raw syscall.RawConn) *exchanger {
	x := &exchanger{raw: raw, buf: make([]byte, answerBufSize)}
	x.read = func(fd uintptr) bool {
		flags := unix.MSG_DONTWAIT | unix.MSG_TRUNC
		if x.peek {
			flags |= unix.MSG_PEEK
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&x.buf[0])), uintptr(len(x.buf)), uintptr(flags), 0, 0)
		if errno == unix.EAGAIN || errno == unix.EINTR {
			return false // the poller waits for the socket, within the deadline
		}
		x.n, x.err = int(n), errnoErr(errno)
		return true
	}
	x.write = func(fd uintptr) bool {
		_, _, errno := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&x.req[0])), uintptr(len(x.req)), 0, 0, 0)
		if errno == unix.EAGAIN || errno == unix.EINTR {
			return false
		}
		x.err = errnoErr(errno)
		return true
	}
	return x
}

// errnoErr is errno as an error, nil for 0.
func errnoErr(errno unix.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}

// exchange sends m and passes each message of the answer to each, until
// the answer is complete; it reports whether the kernel flagged a dump
// interrupted (NLM_F_DUMP_INTR). The messages' data is the Conn's buffer:
// each must decode what it keeps before it returns. A refusal is the
// kernel's errno in a *netlink.OpError, with the kernel's reason, if it
// gave one, as its Message.
func (x *exchanger) exchange(m netlink.Message, each func(netlink.Message) error) (intr bool, err error) {
	x.seq++
	x.req = appendRequest(x.req[:0], m, x.seq)
	if err := x.raw.Write(x.write); err != nil {
		return false, err
	}
	if x.err != nil {
		return false, x.err
	}
	for {
		b, err := x.datagram()
		if err != nil {
			return intr, err
		}
		done, i, err := walk(b, x.seq, each)
		intr = intr || i
		if done || err != nil {
			return intr, err
		}
	}
}

// datagram reads the next datagram of the answer, growing the buffer first
// if the datagram is bigger.
func (x *exchanger) datagram() ([]byte, error) {
	if err := x.recv(true); err != nil {
		return nil, err
	}
	if x.n > len(x.buf) {
		x.buf = make([]byte, x.n)
	}
	if err := x.recv(false); err != nil {
		return nil, err
	}
	if x.n > len(x.buf) {
		return nil, fmt.Errorf("an answer of %d bytes did not fit %d", x.n, len(x.buf))
	}
	return x.buf[:x.n], nil
}

// recv reads a datagram into the buffer, or only looks at it (peek),
// setting x.n to its length.
func (x *exchanger) recv(peek bool) error {
	x.peek = peek
	if err := x.raw.Read(x.read); err != nil {
		return err
	}
	return x.err
}

// appendRequest appends m, as request number seq, to b.
func appendRequest(b []byte, m netlink.Message, seq uint32) []byte {
	b = binary.NativeEndian.AppendUint32(b, uint32(nlmsgHdrLen+len(m.Data)))
	b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Type))
	b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Flags))
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // the kernel's port
	return append(b, m.Data...)
}

// walk decodes the messages of one datagram b of the answer to request
// seq, passing each data message to each. done says the answer is
// complete: an acknowledgement, an error, the end of a dump (NLMSG_DONE),
// or a message that is not part of a multipart answer. intr says a message
// carried NLM_F_DUMP_INTR.
func walk(b []byte, seq uint32, each func(netlink.Message) error) (done, intr bool, err error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return true, intr, fmt.Errorf("a message of %d bytes, shorter than its header", len(b))
		}
		h := netlink.Header{
			Length:   binary.NativeEndian.Uint32(b[0:4]),
			Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:6])),
			Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:8])),
			Sequence: binary.NativeEndian.Uint32(b[8:12]),
			PID:      binary.NativeEndian.Uint32(b[12:16]),
		}
		if h.Length < nlmsgHdrLen || int64(h.Length) > int64(len(b)) {
			return true, intr, fmt.Errorf("a message of %d bytes in %d", h.Length, len(b))
		}
		if h.Sequence != seq {
			return true, intr, fmt.Errorf("an answer to request %d, not %d", h.Sequence, seq)
		}
		data := b[nlmsgHdrLen:h.Length]
		b = b[min(nlmAlign(int(h.Length)), len(b)):]
		intr = intr || h.Flags&netlink.DumpInterrupted != 0
		switch h.Type {
		case netlink.Error:
			return true, intr, ackError(h, data)
		case netlink.Done:
			// A dump's end carries its error code, 0 unless it failed.
			if len(data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(data)); code != 0 {
					return true, intr, &netlink.OpError{Op: "receive", Err: unix.Errno(-code)}
				}
			}
			return true, intr, nil
		case netlink.Noop, netlink.Overrun:
			continue
		}
		if err := each(netlink.Message{Header: h, Data: data}); err != nil {
			return true, intr, err
		}
		if h.Flags&netlink.Multi == 0 {
			return true, intr, nil
		}
	}
	return false, intr, nil
}

// ackError decodes the payload of an NLMSG_ERROR message: nil for an
// acknowledgement, else the errno with the kernel's reason (extended
// acknowledgement), as package netlink's Execute reports it.
func ackError(h netlink.Header, data []byte) error {
	if len(data) < 4 {
		return fmt.Errorf("an error message whose payload (%d bytes) is shorter than its 4-byte code", len(data))
	}
	code := int32(binary.NativeEndian.Uint32(data))
	if code == 0 {
		return nil
	}
	oe := &netlink.OpError{Op: "receive", Err: unix.Errno(-code)}
	if h.Flags&nlmFAckTLVs == 0 || len(data) < 4+nlmsgHdrLen {
		return oe
	}
	// The request's header follows the code, then its payload unless
	// capped, then the attributes.
	off := 4 + nlmsgHdrLen
	if h.Flags&nlmFCapped == 0 {
		off = 4 + nlmAlign(int(binary.NativeEndian.Uint32(data[4:8])))
	}
	if off > len(data) {
		return oe
	}
	for tlv := data[off:]; len(tlv) >= 4; {
		l := int(binary.NativeEndian.Uint16(tlv[0:2]))
		if l < 4 || l > len(tlv) {
			break
		}
		v := tlv[4:l]
		switch binary.NativeEndian.Uint16(tlv[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case nlmsgerrMsg:
			if i := indexNUL(v); i >= 0 {
				v = v[:i]
			}
			oe.Message = string(v)
		case nlmsgerrOffs:
			if len(v) == 4 {
				oe.Offset = int(binary.NativeEndian.Uint32(v))
			}
		}
		tlv = tlv[min(nlmAlign(l), len(tlv)):]
	}
	return oe
}

// indexNUL is the index of the first NUL byte in b, or -1.
func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// nlmAlign rounds n up to netlink's 4-byte alignment.
func nlmAlign(n int) int { return (n + 3) &^ 3 }
