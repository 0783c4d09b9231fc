package negotiate

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// mapWindow is the most one NBD_CMD_BLOCK_STATUS asks about. The server
// may describe less; Map goes on from where its extents ended.
const mapWindow = 1 << 30

// Extent is a run of bytes of an export with one status in a metadata
// context. Under base:allocation, Flags holds StateHole and StateZero.
type Extent struct {
	Offset uint64
	Length uint64
	Flags  uint32
}

// Query is a session that looks at an export instead of handing it to the
// kernel: it negotiated structured replies and one metadata context, which
// the kernel's nbd driver could not parse, so its connection never leaves
// it. Its methods are not safe for concurrent use.
type Query struct {
	s      *session
	export Export
	id     uint32 // the context's ID
	cookie uint64 // of the last request
	broken bool   // out of step with the server: no NBD_CMD_DISC
	closed bool
}

// OpenQuery negotiates on conn a query session for opts.Export with the
// metadata context named metaContext (such as ContextBaseAllocation):
// STARTTLS (with Options.TLS), NBD_OPT_STRUCTURED_REPLY,
// NBD_OPT_SET_META_CONTEXT, then NBD_OPT_GO, all under the handshake
// deadline. A server without structured replies gives an error matching
// ErrNoStructuredReplies; one without the context, ErrNoMetaContext. On
// error conn is closed; on success the Query owns it, and Close ends it.
func OpenQuery(ctx context.Context, conn net.Conn, opts Options, metaContext string) (*Query, error) {
	if err := checkQueryContext(metaContext); err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	s, err := begin(ctx, conn, opts)
	if err != nil {
		return nil, err
	}
	ex, id, err := s.query(metaContext)
	if err := s.finish(ex, err); err != nil {
		return nil, err
	}
	ex.StructuredReplies, ex.MetaContexts = true, []string{metaContext}
	s.canAbort = false
	return &Query{s: s, export: *ex, id: id}, nil
}

// checkQueryContext checks the name of the context asked for.
func checkQueryContext(name string) error {
	if len(name) > MaxStringSize {
		return fmt.Errorf("negotiate: metadata context name of %d bytes, longer than the protocol's limit of %d", len(name), MaxStringSize)
	}
	if err := checkContextName(name); err != nil {
		return fmt.Errorf("negotiate: metadata context %w", err)
	}
	return nil
}

// Export describes the export, as NBD_OPT_GO did; StructuredReplies is
// true and MetaContexts holds the selected context.
func (q *Query) Export() Export { return q.export }

// Map asks the server for the status of [offset, offset+length) with
// NBD_CMD_BLOCK_STATUS, in requests of at most 1 GiB (each going on from
// where the server's extents ended), and calls fn with each extent in
// order as it arrives: nothing is held but the request in flight. Extents
// are as the server sent them, the last of each reply cut at the end of its
// request; fn merges nothing. Each request must be answered within
// Options.Timeout, and ctx cancels. An error from fn stops Map and is
// returned as it is.
//
// A *CommandError is the server refusing a request; the extents fn got
// before it stand, and the session is still usable. Any other error means
// the session is broken: the server broke the protocol (ErrProtocol), was
// too slow, or the connection failed.
func (q *Query) Map(ctx context.Context, offset, length uint64, fn func(Extent) error) error {
	switch {
	case q.closed:
		return errors.New("negotiate: Map on a closed Query")
	case q.broken:
		return errors.New("negotiate: Map on a broken Query")
	case offset > q.export.Size || length > q.export.Size-offset:
		return fmt.Errorf("negotiate: range %d+%d is beyond the export's %d bytes", offset, length, q.export.Size)
	}
	end := offset + length
	if mb := uint64(q.export.MinBlock); mb > 1 && (offset%mb != 0 || (end%mb != 0 && end != q.export.Size)) {
		return fmt.Errorf("negotiate: range %d+%d is not aligned to the minimum block size %d", offset, length, mb)
	}
	s := q.s
	s.ctx = ctx
	s.watch(ctx)
	defer func() {
		if !s.stop() {
			<-s.cancelled // the connection's deadline is spoilt: the next request sets its own
		}
	}()
	var fnErr error // the decoder stops at it; it breaks q
	extent := func(e Extent) error { fnErr = fn(e); return fnErr }
	for pos := offset; pos < end; {
		p := &pending{cmd: cmdBlockStatus, offset: pos, length: uint32(min(end-pos, mapWindow)), context: q.id, extent: extent}
		n, err := q.do(p)
		if fnErr != nil {
			q.broken = true
			return fnErr
		}
		if err != nil {
			return err
		}
		pos += n
	}
	return nil
}

// do runs p's request (see roundTrip). Any error but a *CommandError
// breaks q. Errors name the request.
func (q *Query) do(p *pending) (uint64, error) {
	n, err := q.roundTrip(p)
	if err == nil {
		return n, nil
	}
	if _, ok := errors.AsType[*CommandError](err); !ok {
		q.broken = true
	}
	return 0, fmt.Errorf("negotiate: %s: %w", p.describe(), err)
}

// roundTrip sends p's request under a fresh deadline and reads its reply.
func (q *Query) roundTrip(p *pending) (uint64, error) {
	s := q.s
	if err := s.arm("no complete reply"); err != nil {
		return 0, err
	}
	// After the deadline is set: a cancellation from now on breaks it.
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	q.cookie++
	p.cookie = q.cookie
	b, _ := request{Type: p.cmd, Cookie: p.cookie, Offset: p.offset, Length: p.length}.MarshalBinary()
	if _, err := s.conn.Write(b); err != nil {
		return 0, s.ioError("sending the request", err)
	}
	return s.receive(p)
}

// Close ends the session: NBD_CMD_DISC and close (TLS shut down first),
// or, when the session is broken, just close. It is safe to call twice.
func (q *Query) Close() error {
	if q.closed {
		return nil
	}
	q.closed = true
	if q.broken {
		return q.s.raw.Close()
	}
	return Disconnect(q.s.conn)
}
