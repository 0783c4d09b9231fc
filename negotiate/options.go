package negotiate

import (
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"
)

// The options, one function each (as QEMU's nbd/client.c has them), and the
// exchange they share: an option request, then replies up to an NBD_REP_ACK
// or an error reply. Errors here carry no step name; the flow adds it.

// startTLS sends NBD_OPT_STARTTLS, which wants a bare NBD_REP_ACK. A refusal
// is ErrTLSUnsupported: Options.TLS means TLS or nothing.
func (s *session) startTLS() error {
	err := s.exchange(OptStartTLS, nil, 0, nil)
	if oe, ok := errors.AsType[*OptionError](err); ok {
		return fmt.Errorf("%w; refusing to continue without TLS (%w)", ErrTLSUnsupported, oe)
	}
	return err
}

// infoOrGo sends NBD_OPT_GO or NBD_OPT_INFO for name, asking for the block
// size constraints (and name and description), and reads the replies up to
// the final one.
func (s *session) infoOrGo(opt uint32, name string) (*Export, error) {
	req := infoRequest{Name: name, Infos: []uint16{infoName, infoDescription, infoBlockSize}}
	if opt == OptInfo {
		req.Infos = req.Infos[1:] // List already knows the name
	}
	data, _ := req.MarshalBinary()
	ex := &Export{Name: name}
	var block *blockSizeInfo
	haveExport, count := false, 0
	err := s.exchange(opt, data, RepInfo, func(n uint32) error {
		if count++; count > maxInfoReplies {
			return protocolError("more than %d replies", maxInfoReplies)
		}
		info, err := s.readInfo(n)
		if err != nil {
			return err
		}
		switch i := info.(type) {
		case *exportInfo:
			ex.Size, ex.Flags, haveExport = i.Size, i.Flags, true
		case *blockSizeInfo:
			block = i
		case *nameInfo:
			ex.Name = string(*i)
		case *descriptionInfo:
			ex.Description = string(*i)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !haveExport {
		return nil, protocolError("NBD_REP_ACK without the mandatory NBD_INFO_EXPORT")
	}
	if block != nil {
		if err := checkBlockSizes(block.Min, block.Pref, block.Max, ex.Size); err != nil {
			return nil, err
		}
		ex.MinBlock, ex.PrefBlock, ex.MaxBlock = block.Min, block.Pref, block.Max
	}
	// After NBD_OPT_GO the transmission phase has begun.
	s.canAbort = opt != OptGo
	return ex, nil
}

// readInfo reads and decodes the n-byte payload of one NBD_REP_INFO.
func (s *session) readInfo(n uint32) (infoReply, error) {
	b := s.scratch(int(n))
	if err := s.readFull(b[:min(n, infoTypeLen)], "reading NBD_REP_INFO"); err != nil {
		return nil, err
	}
	if n > infoTypeLen {
		// Named, should the server hang up halfway.
		what := "reading " + infoTypeName(binary.BigEndian.Uint16(b))
		if err := s.readFull(b[infoTypeLen:], what); err != nil {
			return nil, err
		}
	}
	return unmarshalInfo(b)
}

// list sends NBD_OPT_LIST and returns the exports, with name and description.
func (s *session) list() ([]Export, error) {
	var exports []Export
	err := records(s, OptList, nil, RepServer, maxListEntries, maxListBytes, func(r serverReply) error {
		exports = append(exports, Export{Name: r.Name, Description: r.Description})
		return nil
	})
	return exports, err
}

// structuredReply sends NBD_OPT_STRUCTURED_REPLY, which wants a bare
// NBD_REP_ACK; a refusal is an *OptionError. Only List and OpenQuery call
// it, never Handshake.
func (s *session) structuredReply() error { return s.exchange(OptStructuredReply, nil, 0, nil) }

// listMetaContexts sends NBD_OPT_LIST_META_CONTEXT for export name with no
// query, which asks for every context, and returns the names (not nil). The
// IDs of list replies mean nothing and are ignored, as the spec asks.
func (s *session) listMetaContexts(name string) ([]string, error) {
	names := []string{}
	data, _ := metaContextRequest{Name: name}.MarshalBinary()
	err := records(s, OptListMetaContext, data, RepMetaContext, 0, maxMetaContextBytes, func(r metaContextReply) error {
		if len(names) >= maxMetaContexts {
			return protocolError("more than %d NBD_REP_META_CONTEXT replies", maxMetaContexts)
		}
		names = append(names, r.Name)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return names, nil
}

// setMetaContext sends NBD_OPT_SET_META_CONTEXT for export name selecting
// the one context, and returns the ID the server gave it. As in QEMU's
// client, the server must answer with exactly that context or none; none
// (a bare NBD_REP_ACK) is ErrNoMetaContext.
func (s *session) setMetaContext(name, context string) (uint32, error) {
	var id uint32
	n := 0
	data, _ := metaContextRequest{Name: name, Queries: []string{context}}.MarshalBinary()
	err := records(s, OptSetMetaContext, data, RepMetaContext, 0, maxMetaContextBytes, func(r metaContextReply) error {
		if n++; n > 1 {
			return protocolError("a second NBD_REP_META_CONTEXT (%s) for one query", quoteName(r.Name))
		}
		if r.Name != context {
			return protocolError("NBD_REP_META_CONTEXT %s, but the client asked for %s", quoteName(r.Name), quoteName(context))
		}
		id = r.ID
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, fmt.Errorf("%w %s for this export", ErrNoMetaContext, quoteName(context))
	}
	return id, nil
}

// records runs exchange for opt with data, decoding each reply of type
// more as an R for each: at most maxCount replies (unless 0) of maxBytes
// in all, both checked before the payload is read.
func records[R any, P interface {
	*R
	encoding.BinaryUnmarshaler
}](s *session, opt uint32, data []byte, more uint32, maxCount, maxBytes int, each func(R) error) error {
	count, total := 0, 0
	return s.exchange(opt, data, more, func(n uint32) error {
		if count++; maxCount != 0 && count > maxCount {
			return protocolError("more than %d %s replies", maxCount, ReplyName(more))
		}
		if total += int(n); total > maxBytes {
			return protocolError("%s replies exceed %d bytes", OptionName(opt), maxBytes)
		}
		b := s.scratch(int(n))
		if err := s.readFull(b, "reading "+ReplyName(more)); err != nil {
			return err
		}
		var r R
		if err := P(&r).UnmarshalBinary(b); err != nil {
			return err
		}
		return each(r)
	})
}

// exportName sends NBD_OPT_EXPORT_NAME, which ends option haggling, and reads
// the export description. The server's only way to refuse is to close the
// connection.
func (s *session) exportName(name string) (*Export, error) {
	if err := s.sendOption(OptExportName, []byte(name)); err != nil {
		return nil, err
	}
	n := exportNameLen
	if !s.noZeroes {
		n += zeroPad
	}
	b := s.scratch(n)
	if _, err := io.ReadFull(s.conn, b); err != nil {
		if s.ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			return nil, fmt.Errorf("server closed the connection instead of accepting the export (it does not exist, needs TLS, or this client is not allowed): %w", err)
		}
		return nil, s.ioError("reading the export description", err)
	}
	var r exportNameReply
	if err := r.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return &Export{Name: name, Size: r.Size, Flags: r.Flags, Path: PathExportName}, nil
}

// abort sends NBD_OPT_ABORT and gives the server a moment to send its
// NBD_REP_ACK (or hang up), so that neither side is left writing to a peer
// that no longer reads; the reply itself does not matter.
func (s *session) abort() {
	if s.sendOption(OptAbort, nil) != nil {
		return
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(min(abortGrace, time.Until(s.deadline))))
	_, _ = io.ReadFull(s.conn, s.scratch(replyHeaderLen))
}

// sendOption writes one option request with its data.
func (s *session) sendOption(opt uint32, data []byte) error {
	s.canAbort = false
	b, _ := optionRequest{Option: opt, Data: data}.MarshalBinary()
	if _, err := s.conn.Write(b); err != nil {
		return s.ioError("sending "+OptionName(opt), err)
	}
	return nil
}

// exchange sends opt with data and reads the replies up to the final one.
// Each reply of type more goes to each, which must read its n-byte payload
// (n bounded by replyHeader); NBD_REP_ACK ends the exchange, an error reply
// ends it as an *OptionError, and any other reply breaks the protocol. An
// option that wants a bare NBD_REP_ACK has no more and no each.
func (s *session) exchange(opt uint32, data []byte, more uint32, each func(n uint32) error) error {
	if err := s.sendOption(opt, data); err != nil {
		return err
	}
	for {
		h, err := s.readReply(opt)
		if err != nil {
			return err
		}
		switch {
		case h.Type == RepAck:
			// The server waits for the next option, except after
			// NBD_OPT_STARTTLS (TLS comes first) and NBD_OPT_GO;
			// infoOrGo decides once it has checked the replies.
			s.canAbort = opt != OptStartTLS && more != RepInfo
			return nil
		case h.Type&RepErrBit != 0:
			return s.errorReply(h)
		case h.Type == more && each != nil:
			if err := each(h.Length); err != nil {
				return err
			}
		default:
			return protocolError("unexpected %s reply", ReplyName(h.Type))
		}
	}
}

// readReply reads one option reply header and checks that it answers opt.
func (s *session) readReply(opt uint32) (replyHeader, error) {
	var h replyHeader
	b := s.scratch(replyHeaderLen)
	if err := s.readFull(b, "reading the reply header"); err != nil {
		if s.firstAfterTLS && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			err = fmt.Errorf("%w (the server hung up right after the TLS handshake: did it reject the client certificate?)", err)
		}
		return h, err
	}
	s.firstAfterTLS = false
	if err := h.UnmarshalBinary(b); err != nil {
		return h, err
	}
	if h.Option != opt {
		return h, protocolError("reply is for %s, but the client sent %s", OptionName(h.Option), OptionName(opt))
	}
	return h, nil
}

// errorReply reads the message of an error reply and returns it as an
// *OptionError, or a protocol error.
func (s *session) errorReply(h replyHeader) error {
	what := ReplyName(h.Type) + " message"
	if err := checkString(what, int(h.Length)); err != nil {
		return err
	}
	msg := s.scratch(int(h.Length))
	if err := s.readFull(msg, "reading "+what); err != nil {
		return err
	}
	// The server has said its last word on this option and waits for the
	// next one.
	s.canAbort = s.fixed
	return &OptionError{Option: h.Option, Code: h.Type, Message: string(msg)}
}
