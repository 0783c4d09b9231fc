package negotiate

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
)

// The reply decoder of the transmission phase, for a query session (one
// that negotiated NBD_OPT_STRUCTURED_REPLY; never a connection for the
// kernel). It reads the reply to one request: a simple reply, or
// structured reply chunks up to the one flagged NBD_REPLY_FLAG_DONE.
// Every chunk must carry the request's cookie and a type valid for the
// command; content and extents must lie within the request; lengths are
// bounded by chunkHeader before anything is read, payloads are read in
// bounded pieces, and the number of chunks is bounded per reply. Errors
// carry no step name; Query adds it.

// extentBatch is how many block status descriptors are read at a time.
const extentBatch = 512

// pending is one request in flight and what its reply may carry.
type pending struct {
	cmd    uint16 // cmdBlockStatus or cmdRead
	cookie uint64
	offset uint64
	length uint32

	// NBD_CMD_BLOCK_STATUS: the ID of the selected context, and where
	// each extent goes, clipped to the request.
	context uint32
	extent  func(Extent) error

	// NBD_CMD_READ: length bytes that content chunks fill.
	data []byte
}

// end is where the request ends.
func (p *pending) end() uint64 { return p.offset + uint64(p.length) }

// replyState is what one reply has carried so far.
type replyState struct {
	chunks int
	// covered is the bytes of the request that the extents described
	// (at least 1 once the NBD_REPLY_TYPE_BLOCK_STATUS came) or that the
	// content chunks filled.
	covered uint64
	spans   []span        // NBD_CMD_READ: the content chunks so far, sorted
	failed  *CommandError // the first error chunk
}

// span is a byte range [start, end) of a read's content.
type span struct{ start, end uint64 }

// receive reads the whole reply to p. It returns the number of bytes of
// the request the extents described (NBD_CMD_BLOCK_STATUS) or p.length
// (NBD_CMD_READ). A *CommandError means the server reported an error and
// the reply ended properly; any other error leaves the connection out of
// step.
func (s *session) receive(p *pending) (uint64, error) {
	var st replyState
	limit := maxStatusChunks
	if p.cmd == cmdRead {
		limit = maxReadChunks
	}
	for {
		done, err := s.chunk(p, &st)
		if err != nil {
			return 0, err
		}
		if done {
			break
		}
		if st.chunks >= limit {
			return 0, protocolError("more than %d chunks in the reply to %s without NBD_REPLY_FLAG_DONE", limit, commandName(p.cmd))
		}
	}
	switch {
	case st.failed != nil:
		return 0, st.failed
	case p.cmd == cmdBlockStatus && st.covered == 0:
		return 0, protocolError("the reply ended without NBD_REPLY_TYPE_BLOCK_STATUS")
	case p.cmd == cmdRead && st.covered != uint64(p.length):
		return 0, protocolError("the reply ended with %d of the %d bytes read", st.covered, p.length)
	}
	return st.covered, nil
}

// chunk reads one simple reply or one structured reply chunk for p and
// reports whether the reply is complete.
func (s *session) chunk(p *pending, st *replyState) (done bool, err error) {
	b := s.scratch(simpleReplyLen)
	if err := s.readFull(b, "reading the reply"); err != nil {
		return false, err
	}
	switch m := binary.BigEndian.Uint32(b); m {
	case magicSimpleReply:
		return true, s.simple(b, p, st)
	case magicStructuredReply:
	default:
		return false, protocolError("bad reply magic %#08x, want %#08x (structured) or %#08x (simple)", m, magicStructuredReply, magicSimpleReply)
	}
	b = s.scratch(chunkHeaderLen)
	if err := s.readFull(b[simpleReplyLen:], "reading the chunk header"); err != nil {
		return false, err
	}
	var h chunkHeader
	if err := h.UnmarshalBinary(b); err != nil {
		return false, err
	}
	if h.Cookie != p.cookie {
		return false, protocolError("%s for cookie %d, but the request in flight has cookie %d", chunkTypeName(h.Type), h.Cookie, p.cookie)
	}
	st.chunks++
	name := chunkTypeName(h.Type)
	switch h.Type {
	case chunkNone:
	case chunkBlockStatus:
		if p.cmd != cmdBlockStatus {
			return false, protocolError("%s in the reply to %s", name, commandName(p.cmd))
		}
		err = s.blockStatus(h.Length, p, st)
	case chunkOffsetData, chunkOffsetHole:
		if p.cmd != cmdRead {
			return false, protocolError("%s in the reply to %s", name, commandName(p.cmd))
		}
		err = s.content(h, p, st)
	default: // an error chunk: checkChunkLength let no other type through
		err = s.errorChunk(h, p, st)
	}
	if err != nil {
		return false, err
	}
	return h.Flags&chunkFlagDone != 0, nil
}

// simple checks a simple reply (its 16 bytes in b), which may only report
// an error: structured replies were negotiated, so a reply with a payload
// (NBD_CMD_READ, NBD_CMD_BLOCK_STATUS) must be structured.
func (s *session) simple(b []byte, p *pending, st *replyState) error {
	var r simpleReply
	if err := r.UnmarshalBinary(b); err != nil {
		return err
	}
	switch {
	case st.chunks > 0:
		return protocolError("simple reply in the middle of a structured reply")
	case r.Cookie != p.cookie:
		return protocolError("simple reply for cookie %d, but the request in flight has cookie %d", r.Cookie, p.cookie)
	case p.cmd == cmdRead:
		return protocolError("simple reply to NBD_CMD_READ, which must be structured once structured replies are negotiated")
	case r.Error == 0:
		return protocolError("simple reply without an error to %s, whose answer must be structured", commandName(p.cmd))
	}
	st.failed = &CommandError{Command: p.cmd, Errno: r.Error}
	return nil
}

// blockStatus reads an NBD_REPLY_TYPE_BLOCK_STATUS payload of n bytes
// (already checked by chunkHeader: 4 + 8 × 1..maxExtentsPerChunk) in
// extentBatch pieces, and hands each extent to p.extent. Extents follow on
// from p.offset; all but the last must end within the request, and the
// last, which the spec lets run past it, is cut at its end.
func (s *session) blockStatus(n uint32, p *pending, st *replyState) error {
	b := s.scratch(contextIDLen)
	if err := s.readFull(b, "reading NBD_REPLY_TYPE_BLOCK_STATUS"); err != nil {
		return err
	}
	id := binary.BigEndian.Uint32(b)
	if id != p.context {
		return protocolError("NBD_REPLY_TYPE_BLOCK_STATUS for context ID %d, but the selected context has ID %d", id, p.context)
	}
	if st.covered != 0 {
		return protocolError("a second NBD_REPLY_TYPE_BLOCK_STATUS for context ID %d in one reply", id)
	}

	count := int(n-contextIDLen) / descriptorLen
	pos, end := p.offset, p.end()
	for i := 0; i < count; i += extentBatch {
		k := min(extentBatch, count-i)
		b := s.scratch(k * descriptorLen)
		if err := s.readFull(b, "reading block status descriptors"); err != nil {
			return err
		}
		for j := range k {
			d, err := decodeDescriptor(b[j*descriptorLen:])
			if err != nil {
				return err
			}
			last := i+j == count-1
			length := uint64(d.Length)
			switch {
			case pos >= end:
				return protocolError("extent %d of %d starts at %d, past the end of the request at %d", i+j+1, count, pos, end)
			case length > end-pos && !last:
				return protocolError("extent %d of %d (%d+%d) runs past the end of the request at %d", i+j+1, count, pos, length, end)
			case length > end-pos:
				length = end - pos
			}
			if err := p.extent(Extent{Offset: pos, Length: length, Flags: d.Flags}); err != nil {
				return err
			}
			pos += length
		}
	}
	st.covered = pos - p.offset
	return nil
}

// content reads an NBD_REPLY_TYPE_OFFSET_DATA or NBD_REPLY_TYPE_OFFSET_HOLE
// into p.data: within the request, overlapping no earlier content.
func (s *session) content(h chunkHeader, p *pending, st *replyState) error {
	name := chunkTypeName(h.Type)
	n := uint64(h.Length) - offsetLen // data bytes; OFFSET_HOLE overrides
	b := s.scratch(offsetLen)
	if h.Type == chunkOffsetHole {
		b = s.scratch(offsetHoleLen)
	}
	if err := s.readFull(b, "reading "+name); err != nil {
		return err
	}
	off := binary.BigEndian.Uint64(b)
	if h.Type == chunkOffsetHole {
		var hole offsetHole
		if err := hole.UnmarshalBinary(b); err != nil {
			return err
		}
		n = uint64(hole.Size)
	}
	if off < p.offset || off > p.end() || n > p.end()-off {
		return protocolError("%s %d+%d outside the request %d+%d", name, off, n, p.offset, p.length)
	}
	sp := span{off, off + n}
	i, _ := slices.BinarySearchFunc(st.spans, sp, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	if (i > 0 && st.spans[i-1].end > sp.start) || (i < len(st.spans) && st.spans[i].start < sp.end) {
		return protocolError("%s %d+%d overlaps earlier content", name, off, n)
	}
	st.spans = slices.Insert(st.spans, i, sp)
	st.covered += n
	dst := p.data[off-p.offset : off-p.offset+n]
	if h.Type == chunkOffsetHole {
		clear(dst)
		return nil
	}
	return s.readFull(dst, "reading "+name+" data")
}

// errorChunk reads an error chunk. The first one becomes the reply's
// *CommandError; an offset must lie within the request.
func (s *session) errorChunk(h chunkHeader, p *pending, st *replyState) error {
	name := chunkTypeName(h.Type)
	b := s.scratch(int(h.Length))
	if err := s.readFull(b, "reading "+name); err != nil {
		return err
	}
	e, err := unmarshalErrorChunk(b, h.Type)
	if err != nil {
		return err
	}
	if e.HasOffset && (e.Offset < p.offset || e.Offset >= p.end()) {
		return protocolError("%s at offset %d, outside the request %d+%d", name, e.Offset, p.offset, p.length)
	}
	if st.failed == nil {
		st.failed = &CommandError{Command: p.cmd, Errno: e.Error, Message: e.Message, Offset: e.Offset, HasOffset: e.HasOffset}
	}
	return nil
}

// describe names a request for errors: "NBD_CMD_BLOCK_STATUS 0+1073741824".
func (p *pending) describe() string {
	return fmt.Sprintf("%s %d+%d", commandName(p.cmd), p.offset, p.length)
}
