package negotiate

import (
	"fmt"
	"strings"
)

// Magic numbers of the handshake (doc/proto.md, "Handshake").
const (
	magicInit     uint64 = 0x4e42444d41474943 // "NBDMAGIC", first 8 bytes of every greeting
	magicOldstyle uint64 = 0x00420281861253   // cliserv_magic: oldstyle greeting follows
	magicOpt      uint64 = 0x49484156454f5054 // "IHAVEOPT": newstyle greeting, and every option
	magicReply    uint64 = 0x0003e889045565a9 // option reply
	magicRequest  uint32 = 0x25609513         // transmission-phase request
)

// Handshake flags (server → client, 16 bits) and client flags (32 bits).
const (
	hflagFixedNewstyle uint16 = 1 << 0
	hflagNoZeroes      uint16 = 1 << 1

	cflagFixedNewstyle uint32 = 1 << 0
	cflagNoZeroes      uint32 = 1 << 1
)

// Option codes sent by the client during option haggling.
const (
	OptExportName      uint32 = 1  // NBD_OPT_EXPORT_NAME: select an export and end the handshake
	OptAbort           uint32 = 2  // NBD_OPT_ABORT: soft disconnect
	OptList            uint32 = 3  // NBD_OPT_LIST: list exports
	OptPeekExport      uint32 = 4  // NBD_OPT_PEEK_EXPORT: withdrawn, never sent
	OptStartTLS        uint32 = 5  // NBD_OPT_STARTTLS: upgrade the connection to TLS
	OptInfo            uint32 = 6  // NBD_OPT_INFO: describe an export
	OptGo              uint32 = 7  // NBD_OPT_GO: describe an export and end the handshake
	OptStructuredReply uint32 = 8  // NBD_OPT_STRUCTURED_REPLY: sent by List and OpenQuery only, never by Handshake
	OptListMetaContext uint32 = 9  // NBD_OPT_LIST_META_CONTEXT: sent by List only
	OptSetMetaContext  uint32 = 10 // NBD_OPT_SET_META_CONTEXT: sent by OpenQuery only
	OptExtendedHeaders uint32 = 11 // NBD_OPT_EXTENDED_HEADERS: never sent by this package
)

// Option reply types. Error replies have bit 31 set (RepErrBit).
const (
	RepAck         uint32 = 1 // NBD_REP_ACK
	RepServer      uint32 = 2 // NBD_REP_SERVER: one export, in reply to NBD_OPT_LIST
	RepInfo        uint32 = 3 // NBD_REP_INFO: one item, in reply to NBD_OPT_INFO and NBD_OPT_GO
	RepMetaContext uint32 = 4 // NBD_REP_META_CONTEXT

	RepErrBit uint32 = 1 << 31

	RepErrUnsup         = RepErrBit | 1  // NBD_REP_ERR_UNSUP: option unknown to the server
	RepErrPolicy        = RepErrBit | 2  // NBD_REP_ERR_POLICY: forbidden by server policy
	RepErrInvalid       = RepErrBit | 3  // NBD_REP_ERR_INVALID: syntactically or semantically invalid
	RepErrPlatform      = RepErrBit | 4  // NBD_REP_ERR_PLATFORM: not available on the server's platform
	RepErrTLSReqd       = RepErrBit | 5  // NBD_REP_ERR_TLS_REQD: the server requires TLS first
	RepErrUnknown       = RepErrBit | 6  // NBD_REP_ERR_UNKNOWN: the export is not available
	RepErrShutdown      = RepErrBit | 7  // NBD_REP_ERR_SHUTDOWN: the server is shutting down
	RepErrBlockSizeReqd = RepErrBit | 8  // NBD_REP_ERR_BLOCK_SIZE_REQD: the client must request NBD_INFO_BLOCK_SIZE
	RepErrTooBig        = RepErrBit | 9  // NBD_REP_ERR_TOO_BIG: request or reply too large
	RepErrExtHeaderReqd = RepErrBit | 10 // NBD_REP_ERR_EXT_HEADER_REQD: the server requires extended headers
)

// Information types carried by NBD_REP_INFO and requested by NBD_OPT_INFO/GO.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Transmission-phase commands: NBD_CMD_DISC (Disconnect, Query.Close), and
// on a query session only NBD_CMD_READ and NBD_CMD_BLOCK_STATUS.
const (
	cmdRead        uint16 = 0
	cmdDisc        uint16 = 2
	cmdBlockStatus uint16 = 7
)

// Transmission-phase magic numbers of the two reply forms.
const (
	magicSimpleReply     uint32 = 0x67446698 // NBD_SIMPLE_REPLY_MAGIC
	magicStructuredReply uint32 = 0x668e33ef // NBD_STRUCTURED_REPLY_MAGIC
)

// Structured reply chunk flags and types (doc/proto.md, "Structured reply
// types"). Error chunk types have bit 15 set (chunkErrBit).
const (
	chunkFlagDone uint16 = 1 << 0 // NBD_REPLY_FLAG_DONE: the last chunk of the reply

	chunkNone        uint16 = 0 // NBD_REPLY_TYPE_NONE
	chunkOffsetData  uint16 = 1 // NBD_REPLY_TYPE_OFFSET_DATA
	chunkOffsetHole  uint16 = 2 // NBD_REPLY_TYPE_OFFSET_HOLE
	chunkBlockStatus uint16 = 5 // NBD_REPLY_TYPE_BLOCK_STATUS

	chunkErrBit      uint16 = 1 << 15
	chunkError              = chunkErrBit | 1 // NBD_REPLY_TYPE_ERROR
	chunkErrorOffset        = chunkErrBit | 2 // NBD_REPLY_TYPE_ERROR_OFFSET
)

// The protocol names of the values above, looked up with nameOr.
var (
	chunkTypeNames = map[uint16]string{
		chunkNone:        "NBD_REPLY_TYPE_NONE",
		chunkOffsetData:  "NBD_REPLY_TYPE_OFFSET_DATA",
		chunkOffsetHole:  "NBD_REPLY_TYPE_OFFSET_HOLE",
		chunkBlockStatus: "NBD_REPLY_TYPE_BLOCK_STATUS",
		chunkError:       "NBD_REPLY_TYPE_ERROR",
		chunkErrorOffset: "NBD_REPLY_TYPE_ERROR_OFFSET",
	}
	commandNames = map[uint16]string{
		cmdRead:        "NBD_CMD_READ",
		cmdDisc:        "NBD_CMD_DISC",
		cmdBlockStatus: "NBD_CMD_BLOCK_STATUS",
	}
	// errnoNames are the error values of the transmission phase
	// (doc/proto.md, "Error values").
	errnoNames = map[uint32]string{
		1:   "EPERM",
		5:   "EIO",
		12:  "ENOMEM",
		22:  "EINVAL",
		28:  "ENOSPC",
		75:  "EOVERFLOW",
		95:  "ENOTSUP",
		108: "ESHUTDOWN",
	}
	infoTypeNames = map[uint16]string{
		infoExport:      "NBD_INFO_EXPORT",
		infoName:        "NBD_INFO_NAME",
		infoDescription: "NBD_INFO_DESCRIPTION",
		infoBlockSize:   "NBD_INFO_BLOCK_SIZE",
	}
)

// nameOr returns the name of v in names, or v formatted with format when
// names has none.
func nameOr[K comparable](names map[K]string, v K, format string) string {
	if name, ok := names[v]; ok {
		return name
	}
	return fmt.Sprintf(format, v)
}

// chunkTypeName returns the protocol name of a structured reply chunk type.
func chunkTypeName(typ uint16) string {
	if typ&chunkErrBit != 0 {
		return nameOr(chunkTypeNames, typ, "NBD_REPLY_TYPE_ERROR(%#04x)")
	}
	return nameOr(chunkTypeNames, typ, "NBD_REPLY_TYPE(%d)")
}

// commandName returns the protocol name of a transmission command.
func commandName(cmd uint16) string {
	return nameOr(commandNames, cmd, "NBD_CMD(%d)")
}

// errnoName returns the name of an error value of the transmission phase,
// such as "EIO", or "error 42".
func errnoName(e uint32) string {
	return nameOr(errnoNames, e, "error %d")
}

func infoTypeName(typ uint16) string {
	return nameOr(infoTypeNames, typ, "NBD_INFO(%d)")
}

// The base:allocation metadata context (doc/proto.md, "Metadata contexts").
const (
	// ContextBaseAllocation is the one metadata context the protocol
	// defines: whether each extent is allocated, and whether it reads as
	// zeroes.
	ContextBaseAllocation = "base:allocation"

	// StateHole (NBD_STATE_HOLE) in an extent's flags under
	// base:allocation: the extent is not allocated on the server.
	StateHole uint32 = 1 << 0
	// StateZero (NBD_STATE_ZERO) under base:allocation: the extent reads
	// as zeroes.
	StateZero uint32 = 1 << 1
)

// Limits that keep a hostile server from costing the client memory or time.
const (
	// MaxStringSize is the longest string (export name, description, error
	// message) the protocol allows, NBD_MAX_STRING_SIZE.
	MaxStringSize = 4096

	// maxReplyPayload bounds the payload of any single option reply. The
	// largest legitimate one is an NBD_REP_SERVER with a name and a
	// description of MaxStringSize each.
	maxReplyPayload = 64 << 10

	// maxListEntries and maxListBytes bound NBD_OPT_LIST.
	maxListEntries = 1024
	maxListBytes   = 1 << 20

	// maxInfoReplies bounds the NBD_REP_INFO replies to one NBD_OPT_INFO/GO.
	maxInfoReplies = 64

	// maxMetaContexts and maxMetaContextBytes bound the replies to one
	// NBD_OPT_LIST_META_CONTEXT.
	maxMetaContexts     = 1024
	maxMetaContextBytes = 1 << 20

	// maxDataChunk bounds the payload of one NBD_REPLY_TYPE_OFFSET_DATA.
	maxDataChunk = 64 << 20

	// maxExtentsPerChunk bounds the descriptors of one
	// NBD_REPLY_TYPE_BLOCK_STATUS chunk (8 MiB of payload), read in
	// extentBatch pieces, never whole.
	maxExtentsPerChunk = 1 << 20

	// maxErrorChunk bounds the payload of an error chunk: the error,
	// the message length, a message of MaxStringSize and room for an
	// offset or a future type's fields.
	maxErrorChunk = errorChunkLen + MaxStringSize + 64

	// maxStatusChunks and maxReadChunks bound the chunks of one reply to
	// NBD_CMD_BLOCK_STATUS (one per context, plus errors and
	// NBD_REPLY_TYPE_NONE) and to NBD_CMD_READ (content chunks of at
	// least one byte each, plus errors).
	maxStatusChunks = 64
	maxReadChunks   = 1 << 16

	// zeroPad is the reserved tail of the oldstyle greeting and of the
	// NBD_OPT_EXPORT_NAME reply without NBD_FLAG_C_NO_ZEROES.
	zeroPad = 124

	// maxMinBlock is the largest minimum block size allowed.
	maxMinBlock = 64 << 10
)

var optionNames = map[uint32]string{
	OptExportName:      "NBD_OPT_EXPORT_NAME",
	OptAbort:           "NBD_OPT_ABORT",
	OptList:            "NBD_OPT_LIST",
	OptPeekExport:      "NBD_OPT_PEEK_EXPORT",
	OptStartTLS:        "NBD_OPT_STARTTLS",
	OptInfo:            "NBD_OPT_INFO",
	OptGo:              "NBD_OPT_GO",
	OptStructuredReply: "NBD_OPT_STRUCTURED_REPLY",
	OptListMetaContext: "NBD_OPT_LIST_META_CONTEXT",
	OptSetMetaContext:  "NBD_OPT_SET_META_CONTEXT",
	OptExtendedHeaders: "NBD_OPT_EXTENDED_HEADERS",
}

// OptionName returns the protocol name of an option code, such as
// "NBD_OPT_GO", or "NBD_OPT(42)" for a code this package does not know.
func OptionName(opt uint32) string {
	return nameOr(optionNames, opt, "NBD_OPT(%d)")
}

// replies are the option reply types this package knows: the protocol name
// and, for an error reply, the spec's one-line meaning, shown when the
// server sends no message of its own, and the sentinel error that an
// *OptionError with the code unwraps to, if any.
var replies = map[uint32]struct {
	name, meaning string
	is            error
}{
	RepAck:              {"NBD_REP_ACK", "", nil},
	RepServer:           {"NBD_REP_SERVER", "", nil},
	RepInfo:             {"NBD_REP_INFO", "", nil},
	RepMetaContext:      {"NBD_REP_META_CONTEXT", "", nil},
	RepErrUnsup:         {"NBD_REP_ERR_UNSUP", "option not supported by the server", nil},
	RepErrPolicy:        {"NBD_REP_ERR_POLICY", "forbidden by server policy", nil},
	RepErrInvalid:       {"NBD_REP_ERR_INVALID", "the server found the request invalid", nil},
	RepErrPlatform:      {"NBD_REP_ERR_PLATFORM", "not supported on the server's platform", nil},
	RepErrTLSReqd:       {"NBD_REP_ERR_TLS_REQD", "TLS is required", ErrTLSRequired},
	RepErrUnknown:       {"NBD_REP_ERR_UNKNOWN", "export not available", ErrExportNotFound},
	RepErrShutdown:      {"NBD_REP_ERR_SHUTDOWN", "the server is shutting down", nil},
	RepErrBlockSizeReqd: {"NBD_REP_ERR_BLOCK_SIZE_REQD", "the client must request block size constraints", nil},
	RepErrTooBig:        {"NBD_REP_ERR_TOO_BIG", "request or reply too large", nil},
	RepErrExtHeaderReqd: {"NBD_REP_ERR_EXT_HEADER_REQD", "the server requires extended headers", nil},
}

// ReplyName returns the protocol name of an option reply type, such as
// "NBD_REP_ERR_UNKNOWN", or "NBD_REP_ERR(0x8000002a)" / "NBD_REP(42)" for a
// type this package does not know.
func ReplyName(rep uint32) string {
	if r, ok := replies[rep]; ok {
		return r.name
	}
	if rep&RepErrBit != 0 {
		return fmt.Sprintf("NBD_REP_ERR(%#08x)", rep)
	}
	return fmt.Sprintf("NBD_REP(%d)", rep)
}

// replyMeaning is the spec's one-line meaning of an error reply.
func replyMeaning(rep uint32) string {
	if m := replies[rep].meaning; m != "" {
		return m
	}
	return "unknown error"
}

// Flags are the 16 transmission flags the server sends with the export.
type Flags uint16

// Transmission flags (doc/proto.md, "Transmission flags").
const (
	FlagHasFlags           Flags = 1 << 0  // NBD_FLAG_HAS_FLAGS: always set by a conforming server
	FlagReadOnly           Flags = 1 << 1  // NBD_FLAG_READ_ONLY
	FlagSendFlush          Flags = 1 << 2  // NBD_FLAG_SEND_FLUSH
	FlagSendFUA            Flags = 1 << 3  // NBD_FLAG_SEND_FUA
	FlagRotational         Flags = 1 << 4  // NBD_FLAG_ROTATIONAL
	FlagSendTrim           Flags = 1 << 5  // NBD_FLAG_SEND_TRIM
	FlagSendWriteZeroes    Flags = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	FlagSendDF             Flags = 1 << 7  // NBD_FLAG_SEND_DF
	FlagCanMultiConn       Flags = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	FlagSendResize         Flags = 1 << 9  // NBD_FLAG_SEND_RESIZE
	FlagSendCache          Flags = 1 << 10 // NBD_FLAG_SEND_CACHE
	FlagSendFastZero       Flags = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
	FlagBlockStatusPayload Flags = 1 << 12 // NBD_FLAG_BLOCK_STAT_PAYLOAD
)

// flagNames is indexed by bit number.
var flagNames = [...]string{
	"HAS_FLAGS", "READ_ONLY", "SEND_FLUSH", "SEND_FUA", "ROTATIONAL",
	"SEND_TRIM", "SEND_WRITE_ZEROES", "SEND_DF", "CAN_MULTI_CONN",
	"SEND_RESIZE", "SEND_CACHE", "SEND_FAST_ZERO", "BLOCK_STAT_PAYLOAD",
}

// Has reports whether every flag in f is set in fl.
func (fl Flags) Has(f Flags) bool { return fl&f == f }

// String lists the set flags by their protocol names without the NBD_FLAG_
// prefix, comma-separated ("HAS_FLAGS,READ_ONLY,SEND_FLUSH"). Unknown bits
// appear as one hexadecimal value; no flags at all is "0".
func (fl Flags) String() string {
	if fl == 0 {
		return "0"
	}
	var names []string
	rest := fl
	for i, name := range flagNames {
		if bit := Flags(1) << i; fl&bit != 0 {
			names = append(names, name)
			rest &^= bit
		}
	}
	if rest != 0 {
		names = append(names, fmt.Sprintf("%#x", uint16(rest)))
	}
	return strings.Join(names, ",")
}
