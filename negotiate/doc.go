// Package negotiate is the client side of the NBD handshake (NetworkBlockDevice/nbd
// doc/proto.md), over any net.Conn, under one deadline. It makes no system
// calls of its own and keeps no global state, so it runs and fuzzes anywhere.
//
// It owns three kinds of session. Handshake negotiates a connection for the
// kernel's nbd driver; List asks a server what it offers and hangs up;
// OpenQuery negotiates a connection for looking at an export (its
// allocation map, Query.Map), which this package keeps and reads itself,
// with the transmission-phase reply decoder that goes with it.
//
// # Flow
//
// Handshake reads the greeting and follows whichever of the three handshake
// styles the server speaks:
//
//   - Oldstyle: the greeting already carries size and flags; there are no
//     options, hence no export names and no TLS. Asking for either against an
//     oldstyle server is an error rather than a silent surprise.
//   - Newstyle (not fixed): the client may send NBD_OPT_EXPORT_NAME only.
//   - Fixed newstyle: with Options.TLS set, NBD_OPT_STARTTLS comes first and
//     the TLS handshake runs on the same connection; then NBD_OPT_GO asks for
//     the export together with NBD_INFO_EXPORT, NAME, DESCRIPTION and
//     BLOCK_SIZE. A server that answers NBD_REP_ERR_UNSUP to NBD_OPT_GO is
//     asked NBD_OPT_LIST, so that a wrong name becomes
//     `export "x" not found on server; it offers: a, b` instead of a dropped
//     connection, and then NBD_OPT_EXPORT_NAME.
//
// The client flags NBD_FLAG_C_FIXED_NEWSTYLE and NBD_FLAG_C_NO_ZEROES are sent
// only when the server offered the matching handshake flag.
//
// When a handshake fails after option haggling began, and the server is
// waiting for an option, the client sends NBD_OPT_ABORT as the spec's soft
// disconnect, waits at most 250 ms for the server's acknowledgement, and
// closes; after a protocol violation, a failed TLS
// handshake or the deadline, it just closes.
//
// List, as QEMU's client lists (qemu-nbd --list): STARTTLS with Options.TLS,
// then NBD_OPT_STRUCTURED_REPLY (a refusal only means "no"), NBD_OPT_LIST,
// and for each export NBD_OPT_INFO and, if structured replies were agreed,
// NBD_OPT_LIST_META_CONTEXT with no query (every context). A server without
// NBD_OPT_INFO or the meta-context options is listed with what it did
// answer. List always ends with NBD_OPT_ABORT, so the structured replies it
// agreed to are never used.
//
// OpenQuery: STARTTLS with Options.TLS, NBD_OPT_STRUCTURED_REPLY (refused:
// ErrNoStructuredReplies), NBD_OPT_SET_META_CONTEXT for the export and one
// context (which the server must select alone, by that name, or not at
// all: ErrNoMetaContext), then NBD_OPT_GO as Handshake sends it. Query.Map
// then sends NBD_CMD_BLOCK_STATUS over at most 1 GiB at a time, going on
// from where the server's extents ended, and Query.Close sends NBD_CMD_DISC.
//
// # What is never negotiated
//
// The connection Handshake returns goes to the kernel's nbd driver, which
// parses only simple replies with compact headers. So Handshake never sends
// NBD_OPT_STRUCTURED_REPLY, NBD_OPT_EXTENDED_HEADERS or the meta-context
// options: if it did, the server would answer the kernel in a format the
// kernel cannot read. NBD_OPT_STRUCTURED_REPLY and
// NBD_OPT_LIST_META_CONTEXT are sent only by List, whose connection ends in
// option haggling, and NBD_OPT_STRUCTURED_REPLY and NBD_OPT_SET_META_CONTEXT
// only by OpenQuery, whose connection stays inside the Query (no method
// returns it) until Close. NBD_OPT_EXTENDED_HEADERS is never sent at all.
//
// # TLS
//
// Options.TLS non-nil means TLS or nothing: STARTTLS is the first option, and
// an oldstyle or non-fixed-newstyle server, a refused STARTTLS or a failed TLS
// handshake all end the handshake with an error (ErrTLSUnsupported, or the
// crypto/tls error). Without Options.TLS, a server that demands TLS answers
// NBD_REP_ERR_TLS_REQD, reported as "server requires TLS" (ErrTLSRequired).
// TLS below 1.2 is never accepted.
//
// # A hostile server
//
// The whole handshake runs under one deadline (Options.Timeout, or ctx's
// deadline if earlier) set on the connection, and ctx cancellation breaks any
// blocked read or write. Every length the server sends is checked before
// anything is allocated from it: option replies are bounded at 64 KiB,
// strings at MaxStringSize (4096) bytes, NBD_OPT_LIST at 1024 entries and
// 1 MiB, one NBD_OPT_GO or NBD_OPT_INFO at 64 replies. Fixed-size replies must
// have their exact size (NBD_INFO_EXPORT 12 bytes, NBD_INFO_BLOCK_SIZE 14,
// NBD_REP_ACK empty), every reply must carry the reply magic and echo the
// option sent, block sizes must follow the spec's rules, and export sizes
// must fit an int64. NBD_OPT_LIST_META_CONTEXT is bounded at 1024 contexts
// and 1 MiB; a context name must be valid UTF-8 of the form NAMESPACE:NAME,
// at most MaxStringSize bytes.
//
// In a Query's transmission phase each request must be answered within
// Options.Timeout (ctx cancels too). Every chunk must carry the request's
// cookie and a type valid for the command (NBD_REPLY_TYPE_OFFSET_DATA and
// OFFSET_HOLE only for NBD_CMD_READ), and every chunk header is checked
// against its type's length rules before its payload is read: NONE empty
// and final, OFFSET_HOLE 12 bytes, OFFSET_DATA at most 64 MiB,
// BLOCK_STATUS 4 + 8 × 1 to 1M descriptors (read 512 at a time, never
// whole), error chunks at most 4166 bytes with a message of at most
// MaxStringSize and a nonzero error. A reply to NBD_CMD_BLOCK_STATUS has at
// most 64 chunks, exactly one BLOCK_STATUS for the selected context ID,
// extents of nonzero length, following on from the request's offset, all
// but the last within the request (the last, which the spec lets run on, is
// cut at the request's end). Content chunks must lie within the request and
// not overlap. A simple reply is accepted only as an error to a command
// other than NBD_CMD_READ. Any violation breaks the session: no more
// requests, no NBD_CMD_DISC.
//
// # Errors
//
// Errors start with "negotiate:" and name the step ("greeting",
// "NBD_OPT_STARTTLS", "TLS handshake", `NBD_OPT_GO "rootfs"`, ...). An error
// reply from the server is an *OptionError carrying the server's message:
//
//	negotiate: NBD_OPT_GO "rootfs": server refused: NBD_REP_ERR_UNKNOWN: no such export
//
// errors.Is distinguishes ErrTLSRequired, ErrTLSUnsupported,
// ErrExportNotFound, ErrNoStructuredReplies, ErrNoMetaContext, ErrProtocol
// (the server broke the protocol), os.ErrDeadlineExceeded (the deadline
// passed) and ctx's error. A Query's errors name the request
// (`negotiate: NBD_CMD_BLOCK_STATUS 0+1073741824: ...`); an error the
// server reported for it is a *CommandError:
//
//	negotiate: NBD_CMD_BLOCK_STATUS 0+8388608: server failed NBD_CMD_BLOCK_STATUS: EIO: disk on fire
package negotiate
