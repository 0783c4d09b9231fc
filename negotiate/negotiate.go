package negotiate

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DefaultTimeout bounds a handshake when Options.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// abortGrace bounds the wait for the server's reply to NBD_OPT_ABORT.
const abortGrace = 250 * time.Millisecond

// Options configures one handshake.
type Options struct {
	// Export is the name of the export to select; "" selects the server's
	// default export. It must be at most MaxStringSize bytes.
	Export string

	// TLS, when non-nil, makes TLS mandatory: NBD_OPT_STARTTLS is the first
	// option, and any failure to set TLS up is fatal, never a downgrade to
	// plain text. The caller sets ServerName, RootCAs and Certificates. The
	// config is cloned, and MinVersion raised to TLS 1.2 when lower.
	TLS *tls.Config

	// Timeout bounds the whole handshake; 0 means DefaultTimeout. The
	// earlier of this and ctx's deadline applies.
	Timeout time.Duration
}

// Path says how the export was selected.
type Path string

// The ways an export can be selected, from the newest to the oldest server.
const (
	PathGo         Path = "go"          // NBD_OPT_GO (fixed newstyle)
	PathExportName Path = "export-name" // NBD_OPT_EXPORT_NAME (newstyle, or fixed newstyle without NBD_OPT_GO)
	PathOldstyle   Path = "oldstyle"    // oldstyle greeting: no options, one export per port
)

// Export describes the negotiated export.
type Export struct {
	// Name is the export's name: the server's canonical name when it sent
	// NBD_INFO_NAME, else the name asked for ("" for the default export,
	// and always "" with oldstyle negotiation).
	Name string
	// Description is the server's human-readable description, if any.
	Description string
	// Size is the export size in bytes; never above math.MaxInt64.
	Size uint64
	// Flags are the transmission flags.
	Flags Flags
	// MinBlock, PrefBlock and MaxBlock are the block size constraints from
	// NBD_INFO_BLOCK_SIZE, already checked against the spec; all 0 when the
	// server did not send them. A client that went through NBD_OPT_GO (Path
	// PathGo) asked for them and must honour them.
	MinBlock, PrefBlock, MaxBlock uint32
	// Path says how the export was selected ("" for List entries).
	Path Path
	// TLSVersion and TLSCipher are from the TLS connection state (such as
	// tls.VersionTLS13), 0 without TLS.
	TLSVersion uint16
	TLSCipher  uint16
}

// Handshake negotiates on conn and returns the export and the connection to
// use for the transmission phase (a *tls.Conn when TLS was negotiated), with
// all deadlines cleared. On error it sends NBD_OPT_ABORT when the protocol
// state allows it, closes conn, and returns an error naming the step.
func Handshake(ctx context.Context, conn net.Conn, opts Options) (*Export, net.Conn, error) {
	s, err := begin(ctx, conn, opts)
	if err != nil {
		return nil, nil, err
	}
	ex, err := s.handshake()
	if err != nil {
		return nil, nil, s.fail(err)
	}
	if !s.stop() {
		// ctx was cancelled just as the handshake ended: its callback
		// has run or is running, and has spoilt the deadline.
		<-s.cancelled
		return nil, nil, s.fail(fmt.Errorf("negotiate: %w", s.ctx.Err()))
	}
	if err := s.conn.SetDeadline(time.Time{}); err != nil {
		return nil, nil, s.fail(fmt.Errorf("negotiate: clearing the handshake deadline: %w", err))
	}
	ex.TLSVersion, ex.TLSCipher = s.tlsVersion, s.tlsCipher
	return ex, s.conn, nil
}

// List asks for every export (NBD_OPT_LIST), then NBD_OPT_INFO for each (when
// the server supports it; if INFO is unsupported, entries carry only name and
// description), then sends NBD_OPT_ABORT and closes conn. TLS is as in
// Handshake; Options.Export is ignored. An NBD_OPT_INFO refused for one
// export (say NBD_REP_ERR_TLS_REQD for a TLS-only export) leaves that entry
// with name and description only.
func List(ctx context.Context, conn net.Conn, opts Options) ([]Export, error) {
	opts.Export = ""
	s, err := begin(ctx, conn, opts)
	if err != nil {
		return nil, err
	}
	exports, err := s.listAll()
	if err != nil {
		return nil, s.fail(err)
	}
	s.stop()
	s.end()
	return exports, nil
}

// Disconnect sends NBD_CMD_DISC on a connection in the transmission phase that
// is not handed to the kernel, then closes it. The write is bounded by
// DefaultTimeout.
func Disconnect(conn net.Conn) error {
	var req [28]byte
	binary.BigEndian.PutUint32(req[0:], magicRequest)
	binary.BigEndian.PutUint16(req[4:], 0) // command flags
	binary.BigEndian.PutUint16(req[6:], cmdDisc)
	// handle, offset and length stay zero.
	_ = conn.SetWriteDeadline(time.Now().Add(DefaultTimeout))
	_, werr := conn.Write(req[:])
	cerr := conn.Close()
	if werr != nil {
		return fmt.Errorf("negotiate: sending NBD_CMD_DISC: %w", werr)
	}
	if cerr != nil {
		return fmt.Errorf("negotiate: closing after NBD_CMD_DISC: %w", cerr)
	}
	return nil
}

// session is the client's state during one handshake.
type session struct {
	ctx       context.Context
	opts      Options
	raw       net.Conn // the caller's connection
	conn      net.Conn // raw, or the TLS client on top of it
	deadline  time.Time
	budget    time.Duration // deadline - start, for messages
	ctxSets   bool          // the deadline is ctx's
	stop      func() bool   // stops the cancellation callback
	cancelled chan struct{} // closed by the cancellation callback when done

	fixed    bool // fixed newstyle: options other than EXPORT_NAME allowed
	noZeroes bool // NBD_FLAG_C_NO_ZEROES sent
	// canAbort is true while the server waits for the next option, so
	// that NBD_OPT_ABORT is a valid thing to send.
	canAbort bool
	// oldstyle holds the export from an oldstyle greeting.
	oldstyle *Export

	tlsVersion, tlsCipher uint16
	// firstAfterTLS is true until the first reply read over TLS: under
	// TLS 1.3 a server checks the client's certificate after the
	// handshake and resets the connection right there if it refuses it.
	firstAfterTLS bool

	buf [zeroPad + 12]byte // scratch for fixed-size reads
}

// begin validates opts, arms the deadline and the cancellation, and returns
// the session. On error it closes conn.
func begin(ctx context.Context, conn net.Conn, opts Options) (*session, error) {
	if conn == nil {
		return nil, errors.New("negotiate: nil connection")
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	switch {
	case timeout < 0:
		conn.Close()
		return nil, fmt.Errorf("negotiate: negative timeout %v", timeout)
	case len(opts.Export) > MaxStringSize:
		conn.Close()
		return nil, fmt.Errorf("negotiate: export name is %d bytes, longer than the protocol's limit of %d", len(opts.Export), MaxStringSize)
	}
	if err := ctx.Err(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("negotiate: %w", err)
	}
	now := time.Now()
	s := &session{
		ctx:       ctx,
		opts:      opts,
		raw:       conn,
		conn:      conn,
		deadline:  now.Add(timeout),
		cancelled: make(chan struct{}),
	}
	if d, ok := ctx.Deadline(); ok && !d.After(s.deadline) {
		s.deadline, s.ctxSets = d, true
	}
	s.budget = s.deadline.Sub(now).Round(time.Millisecond)
	if err := conn.SetDeadline(s.deadline); err != nil {
		conn.Close()
		return nil, fmt.Errorf("negotiate: setting the handshake deadline: %w", err)
	}
	s.stop = context.AfterFunc(ctx, func() {
		// A deadline in the past wakes every blocked read and write.
		_ = conn.SetDeadline(time.Unix(1, 0))
		close(s.cancelled)
	})
	return s, nil
}

// fail ends a failed session: NBD_OPT_ABORT when the server is waiting for
// an option, then close. It returns err.
func (s *session) fail(err error) error {
	s.stop()
	s.end()
	return err
}

// end sends NBD_OPT_ABORT if the protocol state allows it and there is time
// left, then closes the connection (shutting TLS down first).
func (s *session) end() {
	live := s.ctx.Err() == nil && time.Now().Before(s.deadline)
	if s.canAbort && live && s.sendOption(OptAbort, nil) == nil {
		// Give the server a moment to send its NBD_REP_ACK (or hang
		// up), so that neither side is left writing to a peer that no
		// longer reads; the reply itself does not matter.
		wait := time.Now().Add(abortGrace)
		if s.deadline.Before(wait) {
			wait = s.deadline
		}
		_ = s.conn.SetReadDeadline(wait)
		_, _ = io.ReadFull(s.conn, s.buf[:20])
	}
	if tc, ok := s.conn.(*tls.Conn); ok && live {
		// tls.Conn.Close sends close_notify under a write deadline of its
		// own (5 s): cap it at the handshake deadline.
		t := time.AfterFunc(time.Until(s.deadline), func() { s.raw.Close() })
		tc.Close()
		t.Stop()
	}
	s.raw.Close()
}

// handshake runs the whole negotiation for Handshake.
func (s *session) handshake() (*Export, error) {
	name := s.opts.Export
	if err := s.greet(true); err != nil {
		return nil, fmt.Errorf("negotiate: greeting: %w", err)
	}
	if s.oldstyle != nil {
		return s.oldstyle, nil
	}
	if !s.fixed {
		// Non-fixed newstyle knows one option only.
		ex, err := s.exportName(name)
		if err != nil {
			return nil, fmt.Errorf("negotiate: NBD_OPT_EXPORT_NAME %q: %w", name, err)
		}
		return ex, nil
	}
	if s.opts.TLS != nil {
		if err := s.startTLS(); err != nil {
			return nil, err
		}
	}

	ex, err := s.info(OptGo, name)
	if err == nil {
		ex.Path = PathGo
		return ex, nil
	}
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Code != RepErrUnsup {
		return nil, fmt.Errorf("negotiate: NBD_OPT_GO %q: %w", name, err)
	}

	// An older server: NBD_OPT_EXPORT_NAME cannot report errors, so look
	// the name up first to turn a typo into a clear message. The default
	// export need not be listed.
	if name != "" {
		exports, err := s.list()
		switch {
		case err == nil:
			if !slices.ContainsFunc(exports, func(e Export) bool { return e.Name == name }) {
				return nil, &notFoundError{name: name, offers: exports}
			}
		case errors.As(err, &oe) && oe.Code != RepErrTLSReqd && oe.Code != RepErrShutdown:
			// Listing is optional (unsupported, or forbidden by
			// policy): go ahead without it.
		default:
			return nil, fmt.Errorf("negotiate: NBD_OPT_LIST: %w", err)
		}
	}
	ex, err = s.exportName(name)
	if err != nil {
		return nil, fmt.Errorf("negotiate: NBD_OPT_EXPORT_NAME %q: %w", name, err)
	}
	return ex, nil
}

// listAll runs the negotiation for List.
func (s *session) listAll() ([]Export, error) {
	if err := s.greet(false); err != nil {
		return nil, fmt.Errorf("negotiate: greeting: %w", err)
	}
	if s.oldstyle != nil {
		return nil, errors.New("negotiate: greeting: the server uses oldstyle negotiation, which cannot list exports")
	}
	if !s.fixed {
		return nil, errors.New("negotiate: greeting: the server uses non-fixed newstyle negotiation, which cannot list exports")
	}
	if s.opts.TLS != nil {
		if err := s.startTLS(); err != nil {
			return nil, err
		}
	}
	exports, err := s.list()
	if err != nil {
		return nil, fmt.Errorf("negotiate: NBD_OPT_LIST: %w", err)
	}
	for i := range exports {
		e := &exports[i]
		ex, err := s.info(OptInfo, e.Name)
		if err != nil {
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Code == RepErrShutdown {
				return nil, fmt.Errorf("negotiate: NBD_OPT_INFO %q: %w", e.Name, err)
			}
			if oe.Code == RepErrUnsup {
				break // an older server: names and descriptions only
			}
			continue // refused for this export only
		}
		if ex.Description == "" {
			ex.Description = e.Description
		}
		ex.Name = e.Name
		*e = *ex
	}
	for i := range exports {
		exports[i].TLSVersion, exports[i].TLSCipher = s.tlsVersion, s.tlsCipher
	}
	return exports, nil
}

// greet reads the server's greeting and, for newstyle, sends the client
// flags. With forHandshake, an oldstyle greeting is refused if a name or TLS
// was asked for.
func (s *session) greet(forHandshake bool) error {
	b := s.buf[:16]
	if err := s.readFull(b, "reading the greeting"); err != nil {
		return err
	}
	if m := binary.BigEndian.Uint64(b[0:]); m != magicInit {
		return protocolError("bad greeting magic %#016x, want %#016x (\"NBDMAGIC\"); is this an NBD server?", m, magicInit)
	}
	switch m := binary.BigEndian.Uint64(b[8:]); m {
	case magicOldstyle:
		return s.greetOldstyle(forHandshake)
	case magicOpt:
	default:
		return protocolError("bad greeting magic %#016x after NBDMAGIC, want %#016x (\"IHAVEOPT\", newstyle) or %#016x (oldstyle)", m, magicOpt, magicOldstyle)
	}

	b = s.buf[:2]
	if err := s.readFull(b, "reading the handshake flags"); err != nil {
		return err
	}
	hflags := binary.BigEndian.Uint16(b)
	// Unknown handshake flags are ignored, as the spec asks.
	s.fixed = hflags&hflagFixedNewstyle != 0
	s.noZeroes = hflags&hflagNoZeroes != 0
	if s.opts.TLS != nil && !s.fixed {
		return fmt.Errorf("%w: the server uses non-fixed newstyle negotiation, which has no NBD_OPT_STARTTLS; refusing to continue without TLS", ErrTLSUnsupported)
	}
	// Only the flags the server offered, as the spec requires.
	var cflags uint32
	if s.fixed {
		cflags |= cflagFixedNewstyle
	}
	if s.noZeroes {
		cflags |= cflagNoZeroes
	}
	b = s.buf[:4]
	binary.BigEndian.PutUint32(b, cflags)
	if _, err := s.conn.Write(b); err != nil {
		return s.ioError("sending the client flags", err)
	}
	s.canAbort = s.fixed
	return nil
}

// greetOldstyle reads the rest of an oldstyle greeting, after the magic.
func (s *session) greetOldstyle(forHandshake bool) error {
	if forHandshake {
		if s.opts.TLS != nil {
			return fmt.Errorf("%w: the server uses oldstyle negotiation, which has no NBD_OPT_STARTTLS; refusing to continue without TLS", ErrTLSUnsupported)
		}
		if s.opts.Export != "" {
			return fmt.Errorf("the server uses oldstyle negotiation, which has no export names, so it cannot select export %q; leave the export name empty", s.opts.Export)
		}
	}
	b := s.buf[:8+4+zeroPad]
	if err := s.readFull(b, "reading the oldstyle greeting"); err != nil {
		return err
	}
	size := binary.BigEndian.Uint64(b[0:])
	flags := binary.BigEndian.Uint32(b[8:])
	if flags>>16 != 0 {
		return protocolError("oldstyle export flags %#08x have bits above the 16 transmission flags set", flags)
	}
	if err := checkSize(size); err != nil {
		return err
	}
	s.oldstyle = &Export{Size: size, Flags: Flags(flags), Path: PathOldstyle}
	return nil
}

// startTLS sends NBD_OPT_STARTTLS and runs the TLS handshake. Every failure
// is fatal: Options.TLS means TLS or nothing.
func (s *session) startTLS() error {
	if err := s.sendOption(OptStartTLS, nil); err != nil {
		return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w", err)
	}
	typ, n, err := s.replyHeader(OptStartTLS)
	if err != nil {
		return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w", err)
	}
	switch {
	case typ == RepAck:
		if n != 0 {
			return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w", protocolError("NBD_REP_ACK carries a %d-byte payload, want none", n))
		}
	case typ&RepErrBit != 0:
		err := s.errorReply(OptStartTLS, typ, n)
		var oe *OptionError
		if errors.As(err, &oe) {
			return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w; refusing to continue without TLS (%w)", ErrTLSUnsupported, oe)
		}
		return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w", err)
	default:
		return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w", protocolError("unexpected %s reply", ReplyName(typ)))
	}

	cfg := s.opts.TLS.Clone()
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	tc := tls.Client(s.raw, cfg)
	if err := tc.HandshakeContext(s.ctx); err != nil {
		// Too late for NBD_OPT_ABORT: the spec wants a hard disconnect.
		return fmt.Errorf("negotiate: TLS handshake: %w", s.ioError("", err))
	}
	s.conn = tc
	st := tc.ConnectionState()
	s.tlsVersion, s.tlsCipher = st.Version, st.CipherSuite
	s.canAbort = true
	s.firstAfterTLS = true
	return nil
}

// info sends NBD_OPT_GO or NBD_OPT_INFO for name, asking for the block size
// constraints (and name and description), and reads the replies up to the
// final one.
func (s *session) info(opt uint32, name string) (*Export, error) {
	reqs := []uint16{infoName, infoDescription, infoBlockSize}
	if opt == OptInfo {
		reqs = reqs[1:] // List already knows the name
	}
	data := make([]byte, 0, 4+len(name)+2+2*len(reqs))
	data = binary.BigEndian.AppendUint32(data, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, uint16(len(reqs)))
	for _, r := range reqs {
		data = binary.BigEndian.AppendUint16(data, r)
	}
	if err := s.sendOption(opt, data); err != nil {
		return nil, err
	}

	ex := &Export{Name: name}
	var haveExport, haveBlock bool
	for i := 0; ; i++ {
		if i > maxInfoReplies {
			return nil, protocolError("more than %d replies", maxInfoReplies)
		}
		typ, n, err := s.replyHeader(opt)
		if err != nil {
			return nil, err
		}
		switch {
		case typ == RepInfo:
			block, err := s.infoReply(n, ex)
			if err != nil {
				return nil, err
			}
			switch block {
			case infoExport:
				haveExport = true
			case infoBlockSize:
				haveBlock = true
			}
		case typ == RepAck:
			if n != 0 {
				return nil, protocolError("NBD_REP_ACK carries a %d-byte payload, want none", n)
			}
			if !haveExport {
				return nil, protocolError("NBD_REP_ACK without the mandatory NBD_INFO_EXPORT")
			}
			if haveBlock {
				if err := checkBlockSizes(ex.MinBlock, ex.PrefBlock, ex.MaxBlock, ex.Size); err != nil {
					return nil, err
				}
			}
			// After NBD_OPT_GO the transmission phase has begun.
			s.canAbort = opt != OptGo
			return ex, nil
		case typ&RepErrBit != 0:
			return nil, s.errorReply(opt, typ, n)
		default:
			return nil, protocolError("unexpected %s reply", ReplyName(typ))
		}
	}
}

// infoReply reads the payload of one NBD_REP_INFO of n bytes into ex and
// returns its information type.
func (s *session) infoReply(n uint32, ex *Export) (uint16, error) {
	if n < 2 {
		return 0, protocolError("NBD_REP_INFO of %d bytes, too short for the information type", n)
	}
	b := s.buf[:2]
	if err := s.readFull(b, "reading NBD_REP_INFO"); err != nil {
		return 0, err
	}
	typ := binary.BigEndian.Uint16(b)
	n -= 2
	switch typ {
	case infoExport:
		if n != 10 {
			return 0, protocolError("NBD_INFO_EXPORT of %d bytes, want 12", n+2)
		}
		b := s.buf[:10]
		if err := s.readFull(b, "reading NBD_INFO_EXPORT"); err != nil {
			return 0, err
		}
		ex.Size = binary.BigEndian.Uint64(b[0:])
		ex.Flags = Flags(binary.BigEndian.Uint16(b[8:]))
		if err := checkSize(ex.Size); err != nil {
			return 0, err
		}
	case infoBlockSize:
		if n != 12 {
			return 0, protocolError("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", n+2)
		}
		b := s.buf[:12]
		if err := s.readFull(b, "reading NBD_INFO_BLOCK_SIZE"); err != nil {
			return 0, err
		}
		ex.MinBlock = binary.BigEndian.Uint32(b[0:])
		ex.PrefBlock = binary.BigEndian.Uint32(b[4:])
		ex.MaxBlock = binary.BigEndian.Uint32(b[8:])
	case infoName, infoDescription:
		str, err := s.readString(n, infoTypeName(typ))
		if err != nil {
			return 0, err
		}
		if typ == infoName {
			ex.Name = str
		} else {
			ex.Description = str
		}
	default:
		// Unknown information types are skipped, as the spec asks; n is
		// bounded by replyHeader.
		if _, err := io.CopyN(io.Discard, s.conn, int64(n)); err != nil {
			return 0, s.ioError("skipping "+infoTypeName(typ), err)
		}
	}
	return typ, nil
}

// list sends NBD_OPT_LIST and returns the exports, with name and description.
func (s *session) list() ([]Export, error) {
	if err := s.sendOption(OptList, nil); err != nil {
		return nil, err
	}
	var exports []Export
	total := 0
	for {
		typ, n, err := s.replyHeader(OptList)
		if err != nil {
			return nil, err
		}
		switch {
		case typ == RepServer:
			if len(exports) >= maxListEntries {
				return nil, protocolError("more than %d NBD_REP_SERVER replies", maxListEntries)
			}
			if n < 4 {
				return nil, protocolError("NBD_REP_SERVER of %d bytes, too short for the name length", n)
			}
			if n > 4+2*MaxStringSize {
				return nil, protocolError("NBD_REP_SERVER of %d bytes, longer than a name and a description of %d bytes each", n, MaxStringSize)
			}
			if total += int(n); total > maxListBytes {
				return nil, protocolError("NBD_OPT_LIST replies exceed %d bytes", maxListBytes)
			}
			b := make([]byte, n)
			if err := s.readFull(b, "reading NBD_REP_SERVER"); err != nil {
				return nil, err
			}
			nameLen := binary.BigEndian.Uint32(b)
			if nameLen > n-4 {
				return nil, protocolError("NBD_REP_SERVER name length %d exceeds the %d-byte payload", nameLen, n-4)
			}
			if nameLen > MaxStringSize || n-4-nameLen > MaxStringSize {
				return nil, protocolError("NBD_REP_SERVER string longer than %d bytes", MaxStringSize)
			}
			exports = append(exports, Export{
				Name:        string(b[4 : 4+nameLen]),
				Description: string(b[4+nameLen:]),
			})
		case typ == RepAck:
			if n != 0 {
				return nil, protocolError("NBD_REP_ACK carries a %d-byte payload, want none", n)
			}
			s.canAbort = true
			return exports, nil
		case typ&RepErrBit != 0:
			return nil, s.errorReply(OptList, typ, n)
		default:
			return nil, protocolError("unexpected %s reply", ReplyName(typ))
		}
	}
}

// exportName sends NBD_OPT_EXPORT_NAME, which ends option haggling, and reads
// the export description. The server's only way to refuse is to close the
// connection.
func (s *session) exportName(name string) (*Export, error) {
	if err := s.sendOption(OptExportName, []byte(name)); err != nil {
		return nil, err
	}
	s.canAbort = false
	n := 10
	if !s.noZeroes {
		n += zeroPad
	}
	b := s.buf[:n]
	if _, err := io.ReadFull(s.conn, b); err != nil {
		if s.ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			return nil, fmt.Errorf("server closed the connection instead of accepting the export (it does not exist, needs TLS, or this client is not allowed): %w", err)
		}
		return nil, s.ioError("reading the export description", err)
	}
	ex := &Export{
		Name:  name,
		Size:  binary.BigEndian.Uint64(b[0:]),
		Flags: Flags(binary.BigEndian.Uint16(b[8:])),
		Path:  PathExportName,
	}
	if err := checkSize(ex.Size); err != nil {
		return nil, err
	}
	return ex, nil
}

// sendOption writes one option request with its data.
func (s *session) sendOption(opt uint32, data []byte) error {
	s.canAbort = false
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	b = append(b, data...)
	if _, err := s.conn.Write(b); err != nil {
		return s.ioError("sending "+OptionName(opt), err)
	}
	return nil
}

// replyHeader reads one option reply header and checks its magic, that it
// answers opt, and that its payload length is within maxReplyPayload.
func (s *session) replyHeader(opt uint32) (typ, length uint32, err error) {
	b := s.buf[:20]
	if err := s.readFull(b, "reading the reply header"); err != nil {
		if s.firstAfterTLS && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			err = fmt.Errorf("%w (the server hung up right after the TLS handshake: did it reject the client certificate?)", err)
		}
		return 0, 0, err
	}
	s.firstAfterTLS = false
	if m := binary.BigEndian.Uint64(b[0:]); m != magicReply {
		return 0, 0, protocolError("bad option reply magic %#016x, want %#016x", m, magicReply)
	}
	if echo := binary.BigEndian.Uint32(b[8:]); echo != opt {
		return 0, 0, protocolError("reply is for %s, but the client sent %s", OptionName(echo), OptionName(opt))
	}
	typ = binary.BigEndian.Uint32(b[12:])
	length = binary.BigEndian.Uint32(b[16:])
	if length > maxReplyPayload {
		return 0, 0, protocolError("%s reply claims a %d-byte payload, more than the %d allowed", ReplyName(typ), length, maxReplyPayload)
	}
	return typ, length, nil
}

// errorReply reads the message of an error reply and returns it as an
// *OptionError, or a protocol error.
func (s *session) errorReply(opt, typ, n uint32) error {
	msg, err := s.readString(n, ReplyName(typ)+" message")
	if err != nil {
		return err
	}
	// The server has said its last word on this option and waits for the
	// next one.
	s.canAbort = s.fixed
	return &OptionError{Option: opt, Code: typ, Message: msg}
}

// readString reads a protocol string of n bytes, refusing more than
// MaxStringSize before allocating.
func (s *session) readString(n uint32, what string) (string, error) {
	if n > MaxStringSize {
		return "", protocolError("%s of %d bytes, longer than the protocol's limit of %d", what, n, MaxStringSize)
	}
	if n == 0 {
		return "", nil
	}
	b := make([]byte, n)
	if err := s.readFull(b, "reading "+what); err != nil {
		return "", err
	}
	return string(b), nil
}

// readFull fills b from the connection.
func (s *session) readFull(b []byte, what string) error {
	if _, err := io.ReadFull(s.conn, b); err != nil {
		return s.ioError(what, err)
	}
	return nil
}

// ioError explains an I/O error: cancellation, the deadline, or the server
// hanging up. what says what was being done ("" for nothing).
func (s *session) ioError(what string, err error) error {
	prefix := ""
	if what != "" {
		prefix = what + ": "
	}
	if cerr := s.ctx.Err(); cerr != nil {
		return fmt.Errorf("%s%w", prefix, cerr)
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		if s.ctxSets {
			// The connection's deadline can fire just before ctx's.
			return fmt.Errorf("%shandshake not done within %v: %w (%w)", prefix, s.budget, context.DeadlineExceeded, err)
		}
		return fmt.Errorf("%shandshake not done within %v: %w", prefix, s.budget, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%sserver closed the connection: %w", prefix, err)
	}
	return fmt.Errorf("%s%w", prefix, err)
}

// checkSize refuses export sizes that do not fit an int64 (the kernel's
// and every file API's offset type).
func checkSize(size uint64) error {
	if size > math.MaxInt64 {
		return protocolError("export size %d is larger than 2^63-1", size)
	}
	return nil
}

// checkBlockSizes applies the rules of doc/proto.md, "Block size
// constraints", to an NBD_INFO_BLOCK_SIZE.
func checkBlockSizes(minBlock, pref, maxBlock uint32, size uint64) error {
	if minBlock == 0 || minBlock > maxMinBlock || minBlock&(minBlock-1) != 0 {
		return protocolError("minimum block size %d is not a power of two from 1 to %d", minBlock, maxMinBlock)
	}
	if pref < max(minBlock, 512) || pref&(pref-1) != 0 {
		return protocolError("preferred block size %d is not a power of two at least max(minimum block size %d, 512)", pref, minBlock)
	}
	if maxBlock != math.MaxUint32 && maxBlock%minBlock != 0 {
		return protocolError("maximum block size %d is not a multiple of the minimum block size %d", maxBlock, minBlock)
	}
	if maxBlock < minBlock {
		return protocolError("maximum block size %d is smaller than the minimum block size %d", maxBlock, minBlock)
	}
	if uint64(maxBlock) < min(uint64(pref), size) {
		return protocolError("maximum block size %d is smaller than the preferred block size %d", maxBlock, pref)
	}
	return nil
}

// notFoundError reports an export missing from NBD_OPT_LIST.
type notFoundError struct {
	name   string
	offers []Export
}

func (e *notFoundError) Error() string {
	if len(e.offers) == 0 {
		return fmt.Sprintf("negotiate: export %q not found on server; it lists no exports", e.name)
	}
	const show = 20
	names := make([]string, 0, min(len(e.offers), show))
	for i, ex := range e.offers {
		if i == show {
			break
		}
		names = append(names, sanitize(ex.Name))
	}
	more := ""
	if len(e.offers) > show {
		more = fmt.Sprintf(" and %d more", len(e.offers)-show)
	}
	return fmt.Sprintf("negotiate: export %q not found on server; it offers: %s%s", e.name, strings.Join(names, ", "), more)
}

func (e *notFoundError) Is(target error) bool { return target == ErrExportNotFound }
