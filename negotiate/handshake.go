package negotiate

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
)

// The handshake flow: which options are sent in which order, and the
// context ("negotiate: STEP: ") each step's error gets, once.

// handshake runs the whole negotiation for Handshake.
func (s *session) handshake() (*Export, error) {
	if err := s.greet(true); err != nil {
		return nil, fmt.Errorf("negotiate: greeting: %w", err)
	}
	if s.oldstyle != nil {
		return s.oldstyle, nil
	}
	if err := s.secure(); err != nil {
		return nil, err
	}
	return s.selectExport(s.opts.Export)
}

// selectExport ends option haggling with NBD_OPT_GO for name, or, on a
// server that does not know NBD_OPT_GO, NBD_OPT_LIST (to name a missing
// export) and NBD_OPT_EXPORT_NAME, which is all a non-fixed newstyle
// server knows.
func (s *session) selectExport(name string) (*Export, error) {
	if s.fixed {
		ex, err := s.infoOrGo(OptGo, name)
		if err == nil {
			ex.Path = PathGo
			return ex, nil
		}
		if oe, ok := errors.AsType[*OptionError](err); !ok || oe.Code != RepErrUnsup {
			return nil, fmt.Errorf("negotiate: NBD_OPT_GO %q: %w", name, err)
		}
		if err := s.checkListed(name); err != nil {
			return nil, err
		}
	}
	ex, err := s.exportName(name)
	if err != nil {
		return nil, fmt.Errorf("negotiate: NBD_OPT_EXPORT_NAME %q: %w", name, err)
	}
	return ex, nil
}

// checkListed looks name up with NBD_OPT_LIST before NBD_OPT_EXPORT_NAME,
// which cannot report errors, to turn a typo into a clear message. The
// default export need not be listed.
func (s *session) checkListed(name string) error {
	if name == "" {
		return nil
	}
	exports, err := s.list()
	oe, refused := errors.AsType[*OptionError](err)
	switch {
	case err == nil:
		if !slices.ContainsFunc(exports, func(e Export) bool { return e.Name == name }) {
			return &notFoundError{name: name, offers: exports}
		}
	case refused && oe.Code != RepErrTLSReqd && oe.Code != RepErrShutdown:
		// Listing is optional (unsupported, or forbidden by policy): go
		// ahead without it.
	default:
		return fmt.Errorf("negotiate: NBD_OPT_LIST: %w", err)
	}
	return nil
}

// listAll runs the negotiation for List.
func (s *session) listAll() ([]Export, error) {
	err := s.greetFixed(
		errors.New("negotiate: greeting: the server uses oldstyle negotiation, which cannot list exports"),
		errors.New("negotiate: greeting: the server uses non-fixed newstyle negotiation, which cannot list exports"))
	if err != nil {
		return nil, err
	}
	// As QEMU's client lists: structured replies first, so that the
	// server describes each export as it would to a client using them
	// (NBD_FLAG_SEND_DF) and lets the client list metadata contexts.
	on := true
	structured, err := s.optional(&on, OptStructuredReply, s.structuredReply)
	if err != nil {
		return nil, fmt.Errorf("negotiate: NBD_OPT_STRUCTURED_REPLY: %w", err)
	}
	exports, err := s.list()
	if err != nil {
		return nil, fmt.Errorf("negotiate: NBD_OPT_LIST: %w", err)
	}
	info, metas := true, structured
	for i := range exports {
		e := &exports[i]
		name, desc := e.Name, e.Description
		var ex *Export
		ok, err := s.optional(&info, OptInfo, func() (err error) { ex, err = s.infoOrGo(OptInfo, name); return err })
		if err != nil {
			return nil, fmt.Errorf("negotiate: NBD_OPT_INFO %q: %w", name, err)
		}
		if ok {
			*e = *ex
			e.Name, e.Description = name, cmp.Or(e.Description, desc)
		}
		// Refused, listMetaContexts leaves MetaContexts nil.
		if _, err := s.optional(&metas, OptListMetaContext, func() (err error) { e.MetaContexts, err = s.listMetaContexts(name); return err }); err != nil {
			return nil, fmt.Errorf("negotiate: NBD_OPT_LIST_META_CONTEXT %q: %w", name, err)
		}
		e.TLSVersion, e.TLSCipher = s.tlsVersion, s.tlsCipher
		e.StructuredReplies = structured
	}
	return exports, nil
}

// query runs the negotiation for OpenQuery and returns the export and the
// ID of the metadata context.
func (s *session) query(context string) (*Export, uint32, error) {
	name := s.opts.Export
	err := s.greetFixed(
		fmt.Errorf("negotiate: greeting: %w: the server uses oldstyle negotiation, which has no options", ErrNoStructuredReplies),
		fmt.Errorf("negotiate: greeting: %w: the server uses non-fixed newstyle negotiation, which has no options but NBD_OPT_EXPORT_NAME", ErrNoStructuredReplies))
	if err != nil {
		return nil, 0, err
	}
	if err := s.structuredReply(); err != nil {
		if oe, ok := errors.AsType[*OptionError](err); ok && oe.Code != RepErrTLSReqd && oe.Code != RepErrShutdown {
			err = fmt.Errorf("%w: %w", ErrNoStructuredReplies, err)
		}
		return nil, 0, fmt.Errorf("negotiate: NBD_OPT_STRUCTURED_REPLY: %w", err)
	}
	id, err := s.setMetaContext(name, context)
	if err != nil {
		if oe, ok := errors.AsType[*OptionError](err); ok && (oe.Code == RepErrUnsup || oe.Code == RepErrPolicy) {
			err = fmt.Errorf("%w %s: %w", ErrNoMetaContext, quoteName(context), err)
		}
		return nil, 0, fmt.Errorf("negotiate: NBD_OPT_SET_META_CONTEXT %q: %w", name, err)
	}
	ex, err := s.selectExport(name)
	if err != nil {
		return nil, 0, err
	}
	return ex, id, nil
}

// optional runs do, one option (opt) that List can do without, while *on,
// and reports whether do succeeded. A refusal by the server is no error,
// except NBD_REP_ERR_SHUTDOWN, after which nothing more would work; after
// NBD_REP_ERR_UNSUP (an older server) *on is false, and opt is not asked
// again. A refusal for TLS (NBD_REP_ERR_TLS_REQD) is the export's alone,
// or, from a server that demands TLS for everything, shows again at
// NBD_OPT_LIST, which is not optional.
func (s *session) optional(on *bool, opt uint32, do func() error) (bool, error) {
	if !*on {
		return false, nil
	}
	err := do()
	oe, ok := errors.AsType[*OptionError](err)
	switch {
	case err == nil:
		return true, nil
	case !ok || oe.Option != opt || oe.Code == RepErrShutdown:
		return false, err
	}
	*on = oe.Code != RepErrUnsup
	return false, nil
}

// greetFixed greets a server that must speak fixed newstyle (oldstyle and
// nonFixed are the errors for the other two) and secures the connection
// with Options.TLS.
func (s *session) greetFixed(oldstyle, nonFixed error) error {
	if err := s.greet(false); err != nil {
		return fmt.Errorf("negotiate: greeting: %w", err)
	}
	if s.oldstyle != nil {
		return oldstyle
	}
	if !s.fixed {
		return nonFixed
	}
	return s.secure()
}

// greet reads the server's greeting and, for newstyle, sends the client
// flags. With forHandshake, an oldstyle greeting is refused if a name or TLS
// was asked for.
func (s *session) greet(forHandshake bool) error {
	b := s.scratch(greetingLen)
	if err := s.readFull(b, "reading the greeting"); err != nil {
		return err
	}
	oldstyle, err := greetingStyle(b)
	if err != nil {
		return err
	}
	if oldstyle {
		return s.greetOldstyle(forHandshake)
	}

	b = s.scratch(newstyleLen)
	if err := s.readFull(b[greetingLen:], "reading the handshake flags"); err != nil {
		return err
	}
	var g newstyleGreeting
	if err := g.UnmarshalBinary(b); err != nil {
		return err
	}
	// Unknown handshake flags are ignored, as the spec asks.
	s.fixed = g.Flags&hflagFixedNewstyle != 0
	s.noZeroes = g.Flags&hflagNoZeroes != 0
	if s.opts.TLS != nil && !s.fixed {
		return fmt.Errorf("%w: the server uses non-fixed newstyle negotiation, which has no NBD_OPT_STARTTLS; refusing to continue without TLS", ErrTLSUnsupported)
	}
	// Only the flags the server offered, as the spec requires: each client
	// flag has the bit of the handshake flag it answers.
	b, _ = clientFlags(uint32(g.Flags) & (cflagFixedNewstyle | cflagNoZeroes)).MarshalBinary()
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
	b := s.scratch(oldstyleLen)
	if err := s.readFull(b[greetingLen:], "reading the oldstyle greeting"); err != nil {
		return err
	}
	var g oldstyleGreeting
	if err := g.UnmarshalBinary(b); err != nil {
		return err
	}
	s.oldstyle = &Export{Size: g.Size, Flags: g.Flags, Path: PathOldstyle}
	return nil
}

// secure sends NBD_OPT_STARTTLS and runs the TLS handshake when
// Options.TLS is set. Every failure is fatal: Options.TLS means TLS or
// nothing.
func (s *session) secure() error {
	if s.opts.TLS == nil {
		return nil
	}
	if err := s.startTLS(); err != nil {
		return fmt.Errorf("negotiate: NBD_OPT_STARTTLS: %w", err)
	}
	cfg := s.opts.TLS.Clone()
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
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
