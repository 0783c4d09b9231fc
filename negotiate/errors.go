package negotiate

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors, usable with errors.Is on any error this package returns.
var (
	// ErrTLSRequired: the server answered NBD_REP_ERR_TLS_REQD; it will not
	// serve this client without TLS. Configure Options.TLS.
	ErrTLSRequired = errors.New("server requires TLS")

	// ErrTLSUnsupported: TLS was required by Options.TLS but the server
	// cannot provide it (oldstyle or non-fixed newstyle greeting, or a
	// refused NBD_OPT_STARTTLS). The handshake never falls back to plain
	// text.
	ErrTLSUnsupported = errors.New("server does not support TLS")

	// ErrExportNotFound: the server does not have the requested export
	// (NBD_REP_ERR_UNKNOWN, or a name missing from NBD_OPT_LIST).
	ErrExportNotFound = errors.New("export not found")

	// ErrNoStructuredReplies: the server refused NBD_OPT_STRUCTURED_REPLY
	// (nbd-server answers NBD_REP_ERR_UNSUP), so it cannot answer
	// NBD_CMD_BLOCK_STATUS. The *OptionError is wrapped too.
	ErrNoStructuredReplies = errors.New("server does not support structured replies")

	// ErrNoMetaContext: the server does not offer the metadata context
	// asked for on this export (NBD_OPT_SET_META_CONTEXT selected nothing,
	// or was refused as unsupported).
	ErrNoMetaContext = errors.New("server does not offer metadata context")

	// ErrProtocol: the server broke the protocol (bad magic, a length that
	// does not match, a reply to the wrong option, too many replies...).
	ErrProtocol = errors.New("protocol violation")
)

// OptionError is an error reply (reply type with bit 31 set) from the server
// to one option. Handshake and List return it wrapped with the option and
// export name, as in
//
//	negotiate: NBD_OPT_GO "rootfs": server refused: NBD_REP_ERR_UNKNOWN: export not found
//
// where the text after the last colon is the server's own message.
type OptionError struct {
	Option  uint32 // the option the server refused, such as OptGo
	Code    uint32 // the reply type, such as RepErrUnknown
	Message string // the server's message, possibly empty; not sanitised
}

// Error describes the refusal: "server refused: NBD_REP_ERR_UNKNOWN: MESSAGE",
// or "server requires TLS: NBD_REP_ERR_TLS_REQD: MESSAGE". Without a message
// from the server, the spec's meaning of the code stands in its place.
func (e *OptionError) Error() string {
	verb := "server refused"
	if e.Code == RepErrTLSReqd {
		verb = ErrTLSRequired.Error()
	}
	msg := sanitize(e.Message)
	if msg == "" {
		return fmt.Sprintf("%s: %s (%s)", verb, ReplyName(e.Code), replyMeaning(e.Code))
	}
	return fmt.Sprintf("%s: %s: %s", verb, ReplyName(e.Code), msg)
}

// Unwrap lets errors.Is match ErrTLSRequired for NBD_REP_ERR_TLS_REQD and
// ErrExportNotFound for NBD_REP_ERR_UNKNOWN.
func (e *OptionError) Unwrap() error { return replies[e.Code].is }

// CommandError is an error the server reported for one transmission-phase
// request, in an error chunk (or a simple reply, which has no message). The
// connection stays usable.
type CommandError struct {
	Command uint16 // such as 7, NBD_CMD_BLOCK_STATUS
	Errno   uint32 // the protocol's error value, such as 22 (EINVAL)
	Message string // the server's message, possibly empty; not sanitised
	// Offset is where the error occurred, from
	// NBD_REPLY_TYPE_ERROR_OFFSET; HasOffset says whether it was sent.
	Offset    uint64
	HasOffset bool
}

// Error describes the failure: "server failed NBD_CMD_BLOCK_STATUS: EINVAL:
// MESSAGE", with " at offset N" when the server gave one.
func (e *CommandError) Error() string {
	s := fmt.Sprintf("server failed %s: %s", commandName(e.Command), errnoName(e.Errno))
	if e.HasOffset {
		s += fmt.Sprintf(" at offset %d", e.Offset)
	}
	if msg := sanitize(e.Message); msg != "" {
		s += ": " + msg
	}
	return s
}

// protocolError returns an error wrapping ErrProtocol.
func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// sanitize makes a server-supplied string safe to print on a console: invalid
// UTF-8 and control characters become U+FFFD, and it is cut at MaxStringSize.
func sanitize(s string) string {
	if len(s) > MaxStringSize {
		s = s[:MaxStringSize]
	}
	// strings.Map returns s itself when no rune changes.
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return utf8.RuneError
		}
		return r
	}, s)
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
	shown := e.offers[:min(len(e.offers), show)]
	names := make([]string, 0, len(shown))
	for _, ex := range shown {
		names = append(names, sanitize(ex.Name))
	}
	more := ""
	if len(e.offers) > show {
		more = fmt.Sprintf(" and %d more", len(e.offers)-show)
	}
	return fmt.Sprintf("negotiate: export %q not found on server; it offers: %s%s", e.name, strings.Join(names, ", "), more)
}

func (e *notFoundError) Is(target error) bool { return target == ErrExportNotFound }
