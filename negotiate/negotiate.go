package negotiate

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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

	// Timeout bounds the whole handshake, and in a Query each request's
	// reply; 0 means DefaultTimeout. The earlier of this and ctx's
	// deadline applies.
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
	// StructuredReplies reports that the server accepted
	// NBD_OPT_STRUCTURED_REPLY on the connection that described the export
	// (List's, or a Query's). It is always false from Handshake, which
	// never asks: see the package documentation. Servers report
	// FlagSendDF only when it is true.
	StructuredReplies bool
	// MetaContexts are the metadata contexts the server offers for the
	// export: from List, every context NBD_OPT_LIST_META_CONTEXT returned
	// (nil when the server has no structured replies or refused to
	// list); from a Query, the one context it selected. Always nil from
	// Handshake.
	MetaContexts []string
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
	if err := s.finish(ex, err); err != nil {
		return nil, nil, err
	}
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
	if err := s.end(err); err != nil {
		return nil, err
	}
	return exports, nil
}

// Disconnect sends NBD_CMD_DISC on a connection in the transmission phase that
// is not handed to the kernel, then closes it. The write is bounded by
// DefaultTimeout.
func Disconnect(conn net.Conn) error {
	req, _ := request{Type: cmdDisc}.MarshalBinary()
	_ = conn.SetWriteDeadline(time.Now().Add(DefaultTimeout))
	_, werr := conn.Write(req)
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
	raw       net.Conn      // the caller's connection
	conn      net.Conn      // raw, or the TLS client on top of it
	timeout   time.Duration // Options.Timeout, or DefaultTimeout
	deadline  time.Time
	budget    time.Duration // deadline - start, for messages
	late      string        // what the deadline missed: "handshake not done"
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

	buf []byte // scratch for reads, reused; see scratch
}

// begin validates opts, arms the deadline and the cancellation, and returns
// the session. On error it closes conn.
func begin(ctx context.Context, conn net.Conn, opts Options) (*session, error) {
	if conn == nil {
		return nil, errors.New("negotiate: nil connection")
	}
	timeout := cmp.Or(opts.Timeout, DefaultTimeout)
	var err error
	switch {
	case timeout < 0:
		err = fmt.Errorf("negotiate: negative timeout %v", timeout)
	case len(opts.Export) > MaxStringSize:
		err = fmt.Errorf("negotiate: export name is %d bytes, longer than the protocol's limit of %d", len(opts.Export), MaxStringSize)
	case ctx.Err() != nil:
		err = fmt.Errorf("negotiate: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	s := &session{
		ctx:     ctx,
		opts:    opts,
		raw:     conn,
		conn:    conn,
		timeout: timeout,
		buf:     make([]byte, 0, oldstyleLen), // the largest fixed-size record
	}
	if err := s.arm("handshake not done"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("negotiate: setting the handshake deadline: %w", err)
	}
	s.watch(ctx)
	return s, nil
}

// arm sets the deadline for what comes next, of which late says what it
// misses: Options.Timeout from now, or s.ctx's deadline if earlier.
func (s *session) arm(late string) error {
	now := time.Now()
	s.deadline, s.ctxSets, s.late = now.Add(s.timeout), false, late
	if d, ok := s.ctx.Deadline(); ok && !d.After(s.deadline) {
		s.deadline, s.ctxSets = d, true
	}
	s.budget = s.deadline.Sub(now).Round(time.Millisecond)
	return s.conn.SetDeadline(s.deadline)
}

// watch makes ctx's cancellation break any blocked read or write, until
// s.stop; s.cancelled is closed once the callback is done.
func (s *session) watch(ctx context.Context) {
	s.cancelled = make(chan struct{})
	s.stop = context.AfterFunc(ctx, func() {
		// A deadline in the past wakes every blocked read and write.
		_ = s.raw.SetDeadline(time.Unix(1, 0))
		close(s.cancelled)
	})
}

// finish ends the negotiation that returned ex and err: on success it
// stops the cancellation, clears the deadline and records the TLS state in
// ex; on failure, or if that fails, it ends the session.
func (s *session) finish(ex *Export, err error) error {
	if err != nil {
		return s.end(err)
	}
	if !s.stop() {
		// ctx was cancelled just as the handshake ended: its callback
		// has run or is running, and has spoilt the deadline.
		<-s.cancelled
		return s.end(fmt.Errorf("negotiate: %w", s.ctx.Err()))
	}
	if err := s.conn.SetDeadline(time.Time{}); err != nil {
		return s.end(fmt.Errorf("negotiate: clearing the handshake deadline: %w", err))
	}
	ex.TLSVersion, ex.TLSCipher = s.tlsVersion, s.tlsCipher
	return nil
}

// end ends the session, failed or done with (List), and returns err: it
// stops the cancellation, sends NBD_OPT_ABORT if the protocol state allows
// it and there is time left, then closes the connection (shutting TLS down
// first).
func (s *session) end(err error) error {
	s.stop()
	live := s.ctx.Err() == nil && time.Now().Before(s.deadline)
	if s.canAbort && live {
		s.abort()
	}
	if tc, ok := s.conn.(*tls.Conn); ok && live {
		// tls.Conn.Close sends close_notify under a write deadline of its
		// own (5 s): cap it at the handshake deadline.
		t := time.AfterFunc(time.Until(s.deadline), func() { s.raw.Close() })
		tc.Close()
		t.Stop()
	}
	s.raw.Close()
	return err
}

// scratch returns n bytes of the session's scratch buffer, growing it as
// needed and keeping what it held. The next read may overwrite them.
func (s *session) scratch(n int) []byte {
	if cap(s.buf) < n {
		s.buf = append(s.buf[:cap(s.buf)], make([]byte, n-cap(s.buf))...)
	}
	return s.buf[:n]
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
	if ne, ok := errors.AsType[net.Error](err); errors.Is(err, os.ErrDeadlineExceeded) || (ok && ne.Timeout()) {
		if s.ctxSets {
			// The connection's deadline can fire just before ctx's.
			return fmt.Errorf("%s%s within %v: %w (%w)", prefix, s.late, s.budget, context.DeadlineExceeded, err)
		}
		return fmt.Errorf("%s%s within %v: %w", prefix, s.late, s.budget, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%sserver closed the connection: %w", prefix, err)
	}
	return fmt.Errorf("%s%w", prefix, err)
}
