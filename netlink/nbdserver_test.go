package netlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/negotiate"
)

// NBD protocol numbers (NetworkBlockDevice/nbd doc/proto.md) for the test
// server.
const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic          = 0x49484156454f5054 // "IHAVEOPT"
	repMagic          = 0x3e889045565a9
	reqMagic          = 0x25609513
	simpleReplyMagic  = 0x67446698
	hflagFixed        = 1 << 0
	hflagNoZeroes     = 1 << 1
	optExportName     = 1
	optAbort          = 2
	optInfo           = 6
	optGo             = 7
	repAck            = 1
	repInfo           = 3
	repErrUnsup       = 1<<31 | 1
	infoExport        = 0
	nbdRead           = 0
	nbdWrite          = 1
	nbdDisc           = 2
	nbdFlush          = 3
	nbdTrim           = 4
	flagHasFlags      = 1 << 0
	flagSendFlush     = 1 << 2
	flagSendTrim      = 1 << 5
	flagCanMultiConn  = 1 << 8
	nbdEINVAL         = 22
	serverReadTimeout = time.Minute
)

// memServer is a memory-backed NBD server speaking fixed newstyle with
// NBD_OPT_GO and simple replies, the subset the kernel's client needs. Its
// backing store outlives connections, so a device can be reconnected to it.
type memServer struct {
	t     *testing.T
	flags uint16

	mu    sync.Mutex
	data  []byte
	conns []*serverConn
	// hold, when set, makes the next request go unanswered: the server
	// reports it on held and waits for the connection to be cut.
	hold bool
	held chan uint16
}

// serverConn is one connection's record.
type serverConn struct {
	id   int
	conn net.Conn
	cmds [5]int // requests seen, by NBD_CMD_*
	done chan struct{}
}

func newMemServer(t *testing.T, size int, flags uint16) *memServer {
	s := &memServer{t: t, flags: flags | flagHasFlags, data: make([]byte, size), held: make(chan uint16, 1)}
	for i := range s.data {
		s.data[i] = byte(i*7 + i/4096)
	}
	return s
}

// snapshot copies n bytes of the backing store at off.
func (s *memServer) snapshot(off, n int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.data[off:off+n]...)
}

// count returns how many requests of type cmd connection id has seen.
func (s *memServer) count(id int, cmd int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id].cmds[cmd]
}

// setHold arms or disarms holding the next request.
func (s *memServer) setHold(on bool) {
	s.mu.Lock()
	s.hold = on
	s.mu.Unlock()
}

// kernelSide is the client end of one connection after the handshake, ready
// to be handed to the kernel.
type kernelSide struct {
	f      *os.File
	id     int // the server connection's index
	export *negotiate.Export
	cut    func() // closes the connection from the server's side
}

// fd is the descriptor to give the kernel.
func (k *kernelSide) fd() int { return int(k.f.Fd()) }

// connect makes a socketpair, serves one end and negotiates on the other
// with the real client handshake.
func (s *memServer) connect(t *testing.T) *kernelSide {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	srvFile := os.NewFile(uintptr(fds[0]), "nbd-server")
	srvConn, err := net.FileConn(srvFile)
	srvFile.Close()
	if err != nil {
		t.Fatalf("server conn: %v", err)
	}
	sc := &serverConn{conn: srvConn, done: make(chan struct{})}
	s.mu.Lock()
	sc.id = len(s.conns)
	s.conns = append(s.conns, sc)
	s.mu.Unlock()
	go func() {
		defer close(sc.done)
		defer srvConn.Close()
		if err := s.serve(sc); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("test server connection %d: %v", sc.id, err)
		}
	}()

	cf := os.NewFile(uintptr(fds[1]), "nbd-client")
	cc, err := net.FileConn(cf)
	if err != nil {
		cf.Close()
		t.Fatalf("client conn: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ex, _, err := negotiate.Handshake(ctx, cc, negotiate.Options{Export: "guest"})
	cc.Close() // a duplicate: cf still holds the socket
	if err != nil {
		cf.Close()
		t.Fatalf("handshake: %v", err)
	}
	// net.FileConn made the shared file description non-blocking; the
	// kernel does not care, but the host test reads through cf.
	if err := unix.SetNonblock(int(cf.Fd()), false); err != nil {
		t.Fatalf("clear O_NONBLOCK: %v", err)
	}
	k := &kernelSide{f: cf, id: sc.id, export: ex, cut: func() { srvConn.Close(); <-sc.done }}
	t.Cleanup(func() { cf.Close(); srvConn.Close() })
	return k
}

// serve runs the handshake and the transmission phase on one connection.
func (s *memServer) serve(sc *serverConn) error {
	c := sc.conn
	if err := s.handshake(c); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != reqMagic {
			return fmt.Errorf("bad request magic %#x", m)
		}
		typ := binary.BigEndian.Uint16(hdr[6:])
		handle := hdr[8:16]
		off := binary.BigEndian.Uint64(hdr[16:])
		n := binary.BigEndian.Uint32(hdr[24:])
		s.mu.Lock()
		if int(typ) < len(sc.cmds) {
			sc.cmds[typ]++
		}
		hold := s.hold && typ != nbdDisc
		if hold {
			s.hold = false
		}
		s.mu.Unlock()
		if hold {
			s.held <- typ
			// Never answer: wait for the test to cut the connection.
			_, _ = io.Copy(io.Discard, c)
			return nil
		}
		var payload []byte
		if typ == nbdWrite {
			payload = make([]byte, n)
			if _, err := io.ReadFull(c, payload); err != nil {
				return err
			}
		}
		var errno uint32
		var reply []byte
		s.mu.Lock()
		inRange := off+uint64(n) <= uint64(len(s.data)) && off+uint64(n) >= off
		switch typ {
		case nbdRead:
			if inRange {
				reply = append(reply, s.data[off:off+uint64(n)]...)
			} else {
				errno = nbdEINVAL
			}
		case nbdWrite:
			if inRange {
				copy(s.data[off:], payload)
			} else {
				errno = nbdEINVAL
			}
		case nbdTrim:
			if inRange {
				clear(s.data[off : off+uint64(n)])
			} else {
				errno = nbdEINVAL
			}
		case nbdFlush:
		case nbdDisc:
			s.mu.Unlock()
			return nil
		default:
			errno = nbdEINVAL
		}
		s.mu.Unlock()
		if errno != 0 {
			reply = nil
		}
		out := make([]byte, 16, 16+len(reply))
		binary.BigEndian.PutUint32(out[0:], simpleReplyMagic)
		binary.BigEndian.PutUint32(out[4:], errno)
		copy(out[8:], handle)
		if _, err := c.Write(append(out, reply...)); err != nil {
			return err
		}
	}
}

// handshake is the server side of fixed newstyle negotiation.
func (s *memServer) handshake(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(serverReadTimeout))
	defer c.SetDeadline(time.Time{})
	greet := binary.BigEndian.AppendUint64(nil, nbdMagic)
	greet = binary.BigEndian.AppendUint64(greet, optMagic)
	greet = binary.BigEndian.AppendUint16(greet, hflagFixed|hflagNoZeroes)
	if _, err := c.Write(greet); err != nil {
		return err
	}
	var cflags [4]byte
	if _, err := io.ReadFull(c, cflags[:]); err != nil {
		return err
	}
	noZeroes := binary.BigEndian.Uint32(cflags[:])&hflagNoZeroes != 0
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(h[0:]) != optMagic {
			return errors.New("bad option magic")
		}
		opt := binary.BigEndian.Uint32(h[8:])
		n := binary.BigEndian.Uint32(h[12:])
		if n > 4096 {
			return fmt.Errorf("option %d: length %d", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		s.mu.Lock()
		size := uint64(len(s.data))
		s.mu.Unlock()
		switch opt {
		case optGo, optInfo:
			info := binary.BigEndian.AppendUint16(nil, infoExport)
			info = binary.BigEndian.AppendUint64(info, size)
			info = binary.BigEndian.AppendUint16(info, s.flags)
			if err := optReply(c, opt, repInfo, info); err != nil {
				return err
			}
			if err := optReply(c, opt, repAck, nil); err != nil {
				return err
			}
			if opt == optGo {
				return nil
			}
		case optExportName:
			b := binary.BigEndian.AppendUint64(nil, size)
			b = binary.BigEndian.AppendUint16(b, s.flags)
			if !noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			_, err := c.Write(b)
			return err
		case optAbort:
			_ = optReply(c, opt, repAck, nil)
			return errors.New("client aborted")
		default:
			if err := optReply(c, opt, repErrUnsup, nil); err != nil {
				return err
			}
		}
	}
}

func optReply(c net.Conn, opt, typ uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, repMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := c.Write(append(b, data...))
	return err
}
