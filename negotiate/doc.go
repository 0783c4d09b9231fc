// Package negotiate is the client side of the NBD handshake (NetworkBlockDevice/nbd
// doc/proto.md), over any net.Conn, under one deadline. It makes no system
// calls of its own and keeps no global state, so it runs and fuzzes anywhere.
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
// handshake or the deadline, it just closes. List always ends with
// NBD_OPT_ABORT.
//
// # What is never negotiated
//
// The connection Handshake returns goes to the kernel's nbd driver, which
// parses only simple replies with compact headers. So this package never
// sends NBD_OPT_STRUCTURED_REPLY, NBD_OPT_EXTENDED_HEADERS or the
// meta-context options: if it did, the server would answer the kernel in a
// format the kernel cannot read.
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
// must fit an int64.
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
// ErrExportNotFound, ErrProtocol (the server broke the protocol),
// os.ErrDeadlineExceeded (the deadline passed) and ctx's error.
package negotiate
