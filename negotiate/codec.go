package negotiate

import (
	"encoding"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The wire records of the handshake (doc/proto.md), each a type with
// MarshalBinary and UnmarshalBinary. UnmarshalBinary takes exactly one record
// and enforces every rule that record carries on its own (magic numbers,
// exact sizes, string and payload limits, export size), failing with an error
// that wraps ErrProtocol; rules spanning records (the option a reply echoes,
// block sizes against the export size, reply counts) are the session's.
// MarshalBinary never fails. The option-phase records come first, then those
// of the transmission phase (requests, simple replies, structured reply
// chunks and their payloads), which only a query session reads.

// Record sizes.
const (
	greetingLen      = 8 + 8                           // "NBDMAGIC" and the second magic
	newstyleLen      = greetingLen + 2                 // ... and the handshake flags
	oldstyleLen      = greetingLen + 8 + 4 + zeroPad   // ... and size, flags, reserved bytes
	clientFlagsLen   = 4                               // the client's answer to the greeting
	optionHeaderLen  = 8 + 4 + 4                       // magic, option, data length
	replyHeaderLen   = 8 + 4 + 4 + 4                   // magic, option, reply type, payload length
	exportNameLen    = 8 + 2                           // NBD_OPT_EXPORT_NAME reply without its zero padding
	exportInfoLen    = 2 + 8 + 2                       // NBD_INFO_EXPORT
	blockSizeInfoLen = 2 + 4 + 4 + 4                   // NBD_INFO_BLOCK_SIZE
	requestLen       = 4 + 2 + 2 + 8 + 8 + 4           // transmission request
	infoTypeLen      = 2                               // the information type opening NBD_REP_INFO
	serverNameLen    = 4                               // the name length opening NBD_REP_SERVER
	infoRequestLen   = 4 + 2                           // name length and request count of NBD_OPT_INFO/GO
	maxServerReply   = serverNameLen + 2*MaxStringSize // NBD_REP_SERVER with the longest name and description
	contextIDLen     = 4                               // the context ID opening NBD_REP_META_CONTEXT and BLOCK_STATUS
	simpleReplyLen   = 4 + 4 + 8                       // magic, error, cookie
	chunkHeaderLen   = 4 + 2 + 2 + 8 + 4               // magic, flags, type, cookie, payload length
	offsetLen        = 8                               // the offset opening OFFSET_DATA and OFFSET_HOLE
	offsetHoleLen    = offsetLen + 4                   // NBD_REPLY_TYPE_OFFSET_HOLE
	descriptorLen    = 4 + 4                           // one block status descriptor: length, flags
	errorChunkLen    = 4 + 2                           // error and message length opening every error chunk
	maxStatusPayload = contextIDLen + descriptorLen*maxExtentsPerChunk
)

// newstyleGreeting opens a newstyle handshake: "NBDMAGIC", "IHAVEOPT" and the
// handshake flags.
type newstyleGreeting struct {
	Flags uint16 // handshake flags, such as hflagFixedNewstyle
}

// MarshalBinary encodes the greeting.
func (g newstyleGreeting) MarshalBinary() ([]byte, error) {
	return put(nil, magicInit, magicOpt, g.Flags), nil
}

// UnmarshalBinary decodes the greeting. Unknown flags are kept.
func (g *newstyleGreeting) UnmarshalBinary(b []byte) error {
	if err := wantLen("newstyle greeting", len(b), newstyleLen); err != nil {
		return err
	}
	old, err := greetingStyle(b)
	if err == nil && old {
		err = protocolError("oldstyle magic in a newstyle greeting")
	}
	if err != nil {
		return err
	}
	g.Flags = binary.BigEndian.Uint16(b[greetingLen:])
	return nil
}

// oldstyleGreeting is the whole of an oldstyle handshake: "NBDMAGIC", the
// oldstyle magic, the export's size and flags, and zeroPad reserved bytes.
type oldstyleGreeting struct {
	Size  uint64
	Flags Flags // 32 bits on the wire, of which the upper 16 must be zero
}

// MarshalBinary encodes the greeting.
func (g oldstyleGreeting) MarshalBinary() ([]byte, error) {
	return put(nil, magicInit, magicOldstyle, g.Size, uint32(g.Flags), make([]byte, zeroPad)), nil
}

// UnmarshalBinary decodes the greeting; the reserved bytes are not checked.
func (g *oldstyleGreeting) UnmarshalBinary(b []byte) error {
	if err := wantLen("oldstyle greeting", len(b), oldstyleLen); err != nil {
		return err
	}
	old, err := greetingStyle(b)
	if err == nil && !old {
		err = protocolError("newstyle magic in an oldstyle greeting")
	}
	if err != nil {
		return err
	}
	size := binary.BigEndian.Uint64(b[greetingLen:])
	flags := binary.BigEndian.Uint32(b[greetingLen+8:])
	if flags>>16 != 0 {
		return protocolError("oldstyle export flags %#08x have bits above the 16 transmission flags set", flags)
	}
	if err := checkSize(size); err != nil {
		return err
	}
	g.Size, g.Flags = size, Flags(flags)
	return nil
}

// greetingStyle checks the two magic numbers that open every greeting (the
// first greetingLen bytes of b) and reports whether an oldstyle greeting
// follows.
func greetingStyle(b []byte) (oldstyle bool, err error) {
	if m := binary.BigEndian.Uint64(b[0:]); m != magicInit {
		return false, protocolError("bad greeting magic %#016x, want %#016x (\"NBDMAGIC\"); is this an NBD server?", m, magicInit)
	}
	switch m := binary.BigEndian.Uint64(b[8:]); m {
	case magicOldstyle:
		return true, nil
	case magicOpt:
		return false, nil
	default:
		return false, protocolError("bad greeting magic %#016x after NBDMAGIC, want %#016x (\"IHAVEOPT\", newstyle) or %#016x (oldstyle)", m, magicOpt, magicOldstyle)
	}
}

// clientFlags are the client's answer to a newstyle greeting, such as
// cflagFixedNewstyle.
type clientFlags uint32

// MarshalBinary encodes the flags.
func (f clientFlags) MarshalBinary() ([]byte, error) {
	return binary.BigEndian.AppendUint32(nil, uint32(f)), nil
}

// UnmarshalBinary decodes the flags.
func (f *clientFlags) UnmarshalBinary(b []byte) error {
	if err := wantLen("client flags", len(b), clientFlagsLen); err != nil {
		return err
	}
	*f = clientFlags(binary.BigEndian.Uint32(b))
	return nil
}

// optionRequest is one option from the client: the header and the data.
type optionRequest struct {
	Option uint32 // such as OptGo
	Data   []byte
}

// MarshalBinary encodes the request.
func (r optionRequest) MarshalBinary() ([]byte, error) {
	return put(nil, magicOpt, r.Option, uint32(len(r.Data)), r.Data), nil
}

// UnmarshalBinary decodes a request; Data refers to b.
func (r *optionRequest) UnmarshalBinary(b []byte) error {
	if len(b) < optionHeaderLen {
		return protocolError("option request of %d bytes, too short for the header", len(b))
	}
	if m := binary.BigEndian.Uint64(b); m != magicOpt {
		return protocolError("bad option magic %#016x, want %#016x", m, magicOpt)
	}
	if n := binary.BigEndian.Uint32(b[12:]); uint64(n) != uint64(len(b)-optionHeaderLen) {
		return protocolError("option data length %d, but %d bytes follow", n, len(b)-optionHeaderLen)
	}
	r.Option, r.Data = binary.BigEndian.Uint32(b[8:]), b[optionHeaderLen:]
	return nil
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO: the export's name
// and the information types asked for.
type infoRequest struct {
	Name  string
	Infos []uint16 // such as infoBlockSize
}

// MarshalBinary encodes the request.
func (r infoRequest) MarshalBinary() ([]byte, error) {
	b := put(nil, uint32(len(r.Name)), r.Name, uint16(len(r.Infos)))
	for _, typ := range r.Infos {
		b = put(b, typ)
	}
	return b, nil
}

// UnmarshalBinary decodes the request.
func (r *infoRequest) UnmarshalBinary(b []byte) error {
	if len(b) < infoRequestLen {
		return protocolError("info request of %d bytes, too short", len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-infoRequestLen) {
		return protocolError("info request name length %d exceeds the %d-byte data", n, len(b))
	}
	if err := checkString("export name", int(n)); err != nil {
		return err
	}
	rest := b[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	if rest = rest[2:]; len(rest) != 2*count {
		return protocolError("info request of %d information types in %d bytes", count, len(rest))
	}
	r.Name, r.Infos = string(b[4:4+n]), nil
	for i := range count {
		r.Infos = append(r.Infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return nil
}

// replyHeader opens every option reply: the option it answers, the reply
// type and the length of the payload that follows.
type replyHeader struct {
	Option uint32 // such as OptGo
	Type   uint32 // such as RepInfo
	Length uint32
}

// MarshalBinary encodes the header.
func (h replyHeader) MarshalBinary() ([]byte, error) {
	return put(nil, magicReply, h.Option, h.Type, h.Length), nil
}

// UnmarshalBinary decodes the header, refusing a payload longer than
// maxReplyPayload and an NBD_REP_ACK with any payload.
func (h *replyHeader) UnmarshalBinary(b []byte) error {
	if err := wantLen("option reply header", len(b), replyHeaderLen); err != nil {
		return err
	}
	if m := binary.BigEndian.Uint64(b[0:]); m != magicReply {
		return protocolError("bad option reply magic %#016x, want %#016x", m, magicReply)
	}
	typ, n := binary.BigEndian.Uint32(b[12:]), binary.BigEndian.Uint32(b[16:])
	if n > maxReplyPayload {
		return protocolError("%s reply claims a %d-byte payload, more than the %d allowed", ReplyName(typ), n, maxReplyPayload)
	}
	if typ == RepAck && n != 0 {
		return protocolError("NBD_REP_ACK carries a %d-byte payload, want none", n)
	}
	h.Option, h.Type, h.Length = binary.BigEndian.Uint32(b[8:]), typ, n
	return nil
}

// serverReply is the payload of NBD_REP_SERVER: one export in reply to
// NBD_OPT_LIST.
type serverReply struct {
	Name, Description string
}

// MarshalBinary encodes the reply.
func (r serverReply) MarshalBinary() ([]byte, error) {
	return put(nil, uint32(len(r.Name)), r.Name, r.Description), nil
}

// UnmarshalBinary decodes the reply.
func (r *serverReply) UnmarshalBinary(b []byte) error {
	n := len(b)
	switch {
	case n < serverNameLen:
		return protocolError("NBD_REP_SERVER of %d bytes, too short for the name length", n)
	case n > maxServerReply:
		return protocolError("NBD_REP_SERVER of %d bytes, longer than a name and a description of %d bytes each", n, MaxStringSize)
	}
	nameLen := binary.BigEndian.Uint32(b)
	rest := uint32(n - serverNameLen)
	if nameLen > rest {
		return protocolError("NBD_REP_SERVER name length %d exceeds the %d-byte payload", nameLen, rest)
	}
	if nameLen > MaxStringSize || rest-nameLen > MaxStringSize {
		return protocolError("NBD_REP_SERVER string longer than %d bytes", MaxStringSize)
	}
	r.Name = string(b[serverNameLen : serverNameLen+nameLen])
	r.Description = string(b[serverNameLen+nameLen:])
	return nil
}

// infoReply is the payload of one NBD_REP_INFO: *exportInfo, *blockSizeInfo,
// *nameInfo, *descriptionInfo or *otherInfo.
type infoReply interface {
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
}

// unmarshalInfo decodes an NBD_REP_INFO payload as the record of its
// information type.
func unmarshalInfo(b []byte) (infoReply, error) {
	typ, err := infoType(b)
	if err != nil {
		return nil, err
	}
	var r infoReply
	switch typ {
	case infoExport:
		r = new(exportInfo)
	case infoBlockSize:
		r = new(blockSizeInfo)
	case infoName:
		r = new(nameInfo)
	case infoDescription:
		r = new(descriptionInfo)
	default:
		r = new(otherInfo)
	}
	if err := r.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return r, nil
}

// exportInfo is NBD_INFO_EXPORT: the export's size and transmission flags.
type exportInfo struct {
	Size  uint64
	Flags Flags
}

// MarshalBinary encodes the information.
func (i exportInfo) MarshalBinary() ([]byte, error) {
	return put(nil, infoExport, i.Size, i.Flags), nil
}

// UnmarshalBinary decodes the information.
func (i *exportInfo) UnmarshalBinary(b []byte) error {
	if err := checkInfo(b, infoExport, exportInfoLen); err != nil {
		return err
	}
	size := binary.BigEndian.Uint64(b[infoTypeLen:])
	if err := checkSize(size); err != nil {
		return err
	}
	i.Size, i.Flags = size, Flags(binary.BigEndian.Uint16(b[infoTypeLen+8:]))
	return nil
}

// blockSizeInfo is NBD_INFO_BLOCK_SIZE: the block size constraints, checked
// by checkBlockSizes once the export size is known.
type blockSizeInfo struct {
	Min, Pref, Max uint32
}

// MarshalBinary encodes the information.
func (i blockSizeInfo) MarshalBinary() ([]byte, error) {
	return put(nil, infoBlockSize, i.Min, i.Pref, i.Max), nil
}

// UnmarshalBinary decodes the information.
func (i *blockSizeInfo) UnmarshalBinary(b []byte) error {
	if err := checkInfo(b, infoBlockSize, blockSizeInfoLen); err != nil {
		return err
	}
	i.Min = binary.BigEndian.Uint32(b[infoTypeLen:])
	i.Pref = binary.BigEndian.Uint32(b[infoTypeLen+4:])
	i.Max = binary.BigEndian.Uint32(b[infoTypeLen+8:])
	return nil
}

// nameInfo is NBD_INFO_NAME: the export's canonical name.
type nameInfo string

// MarshalBinary encodes the information.
func (i nameInfo) MarshalBinary() ([]byte, error) { return put(nil, infoName, string(i)), nil }

// UnmarshalBinary decodes the information.
func (i *nameInfo) UnmarshalBinary(b []byte) error { return unmarshalStringInfo(i, b, infoName) }

// descriptionInfo is NBD_INFO_DESCRIPTION: the export's description.
type descriptionInfo string

// MarshalBinary encodes the information.
func (i descriptionInfo) MarshalBinary() ([]byte, error) {
	return put(nil, infoDescription, string(i)), nil
}

// UnmarshalBinary decodes the information.
func (i *descriptionInfo) UnmarshalBinary(b []byte) error {
	return unmarshalStringInfo(i, b, infoDescription)
}

// unmarshalStringInfo decodes into s an NBD_REP_INFO of information type
// typ whose payload is one string (NBD_INFO_NAME, NBD_INFO_DESCRIPTION).
func unmarshalStringInfo[S ~string](s *S, b []byte, typ uint16) error {
	if err := checkInfo(b, typ, 0); err != nil {
		return err
	}
	if err := checkString(infoTypeName(typ), len(b)-infoTypeLen); err != nil {
		return err
	}
	*s = S(b[infoTypeLen:])
	return nil
}

// otherInfo is an NBD_REP_INFO of a type the client does not use, skipped as
// the spec asks.
type otherInfo struct {
	Type uint16
	Data []byte
}

// MarshalBinary encodes the information.
func (i otherInfo) MarshalBinary() ([]byte, error) { return put(nil, i.Type, i.Data), nil }

// UnmarshalBinary decodes the information; Data refers to b.
func (i *otherInfo) UnmarshalBinary(b []byte) error {
	typ, err := infoType(b)
	if err != nil {
		return err
	}
	i.Type, i.Data = typ, b[infoTypeLen:]
	return nil
}

// infoType returns the information type opening an NBD_REP_INFO payload.
func infoType(b []byte) (uint16, error) {
	if len(b) < infoTypeLen {
		return 0, protocolError("NBD_REP_INFO of %d bytes, too short for the information type", len(b))
	}
	return binary.BigEndian.Uint16(b), nil
}

// checkInfo checks that b is an NBD_REP_INFO of information type typ and,
// when size is not 0, of exactly size bytes.
func checkInfo(b []byte, typ uint16, size int) error {
	got, err := infoType(b)
	if err != nil {
		return err
	}
	if got != typ {
		return protocolError("%s where %s was expected", infoTypeName(got), infoTypeName(typ))
	}
	if size == 0 {
		return nil
	}
	return wantLen(infoTypeName(typ), len(b), size)
}

// exportNameReply is the server's acceptance of NBD_OPT_EXPORT_NAME: the
// export's size and flags, and zeroPad reserved bytes unless the client sent
// NBD_FLAG_C_NO_ZEROES.
type exportNameReply struct {
	Size   uint64
	Flags  Flags
	Zeroes bool // the reserved bytes follow
}

// MarshalBinary encodes the reply.
func (r exportNameReply) MarshalBinary() ([]byte, error) {
	b := put(nil, r.Size, r.Flags)
	if r.Zeroes {
		b = append(b, make([]byte, zeroPad)...)
	}
	return b, nil
}

// UnmarshalBinary decodes the reply; the reserved bytes are not checked.
func (r *exportNameReply) UnmarshalBinary(b []byte) error {
	if len(b) != exportNameLen && len(b) != exportNameLen+zeroPad {
		return protocolError("NBD_OPT_EXPORT_NAME reply of %d bytes, want %d or %d", len(b), exportNameLen, exportNameLen+zeroPad)
	}
	size := binary.BigEndian.Uint64(b)
	if err := checkSize(size); err != nil {
		return err
	}
	r.Size, r.Flags, r.Zeroes = size, Flags(binary.BigEndian.Uint16(b[8:])), len(b) > exportNameLen
	return nil
}

// request is the header of a transmission-phase request, such as the
// NBD_CMD_DISC that Disconnect sends.
type request struct {
	Flags  uint16 // command flags
	Type   uint16 // such as cmdDisc
	Cookie uint64
	Offset uint64
	Length uint32
}

// MarshalBinary encodes the request.
func (r request) MarshalBinary() ([]byte, error) {
	return put(nil, magicRequest, r.Flags, r.Type, r.Cookie, r.Offset, r.Length), nil
}

// UnmarshalBinary decodes the request.
func (r *request) UnmarshalBinary(b []byte) error {
	if err := wantLen("request", len(b), requestLen); err != nil {
		return err
	}
	if m := binary.BigEndian.Uint32(b); m != magicRequest {
		return protocolError("bad request magic %#08x, want %#08x", m, magicRequest)
	}
	r.Flags, r.Type = binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:])
	r.Cookie, r.Offset = binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint64(b[16:])
	r.Length = binary.BigEndian.Uint32(b[24:])
	return nil
}

// put appends fields to b: uint16, uint32, uint64 and Flags (16 bits)
// big-endian, string and []byte as they are. Each MarshalBinary is one put
// of its record's fields in wire order.
func put(b []byte, fields ...any) []byte {
	for _, f := range fields {
		switch v := f.(type) {
		case uint16:
			b = binary.BigEndian.AppendUint16(b, v)
		case Flags:
			b = binary.BigEndian.AppendUint16(b, uint16(v))
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		case string:
			b = append(b, v...)
		case []byte:
			b = append(b, v...)
		default:
			panic(fmt.Sprintf("negotiate: put of a %T", f))
		}
	}
	return b
}

// wantLen refuses a record of got bytes where the protocol has want.
func wantLen(what string, got, want int) error {
	if got != want {
		return protocolError("%s of %d bytes, want %d", what, got, want)
	}
	return nil
}

// checkString refuses a protocol string of n bytes longer than
// MaxStringSize.
func checkString(what string, n int) error {
	if n > MaxStringSize {
		return protocolError("%s of %d bytes, longer than the protocol's limit of %d", what, n, MaxStringSize)
	}
	return nil
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

// metaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: the export's name and the queries.
type metaContextRequest struct {
	Name    string
	Queries []string
}

// MarshalBinary encodes the request.
func (r metaContextRequest) MarshalBinary() ([]byte, error) {
	b := put(nil, uint32(len(r.Name)), r.Name, uint32(len(r.Queries)))
	for _, q := range r.Queries {
		b = put(b, uint32(len(q)), q)
	}
	return b, nil
}

// UnmarshalBinary decodes the request: every length must match, and no
// string may be longer than MaxStringSize.
func (r *metaContextRequest) UnmarshalBinary(b []byte) error {
	name, rest, err := lengthString("meta context request export name", b)
	if err != nil {
		return err
	}
	if len(rest) < 4 {
		return protocolError("meta context request of %d bytes, too short for the query count", len(b))
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	// Each query takes at least its 4-byte length: count is bounded by
	// the data before the loop.
	if uint64(count) > uint64(len(rest)/4) {
		return protocolError("meta context request of %d queries in %d bytes", count, len(rest))
	}
	var queries []string
	for range count {
		var q string
		if q, rest, err = lengthString("meta context query", rest); err != nil {
			return err
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return protocolError("meta context request has %d bytes after its queries", len(rest))
	}
	r.Name, r.Queries = name, queries
	return nil
}

// lengthString decodes a 32-bit length and that many bytes of string from
// the start of b, and returns the rest.
func lengthString(what string, b []byte) (string, []byte, error) {
	if len(b) < 4 {
		return "", nil, protocolError("%s: %d bytes, too short for the length", what, len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return "", nil, protocolError("%s length %d exceeds the %d bytes left", what, n, len(b)-4)
	}
	if err := checkString(what, int(n)); err != nil {
		return "", nil, err
	}
	return string(b[4 : 4+n]), b[4+n:], nil
}

// metaContextReply is the payload of NBD_REP_META_CONTEXT: a context's ID
// and its name, which must be valid UTF-8 of the form NAMESPACE:NAME.
type metaContextReply struct {
	ID   uint32
	Name string
}

// MarshalBinary encodes the reply.
func (r metaContextReply) MarshalBinary() ([]byte, error) { return put(nil, r.ID, r.Name), nil }

// UnmarshalBinary decodes the reply.
func (r *metaContextReply) UnmarshalBinary(b []byte) error {
	if len(b) <= contextIDLen {
		return protocolError("NBD_REP_META_CONTEXT of %d bytes, too short for a context ID and a name", len(b))
	}
	name := b[contextIDLen:]
	if err := checkString("NBD_REP_META_CONTEXT name", len(name)); err != nil {
		return err
	}
	if err := checkContextName(string(name)); err != nil {
		return protocolError("NBD_REP_META_CONTEXT %v", err)
	}
	r.ID, r.Name = binary.BigEndian.Uint32(b), string(name)
	return nil
}

// checkContextName checks that a metadata context name is valid UTF-8
// without NUL, of the form NAMESPACE:NAME. The error says what is wrong
// with "name QUOTED ...".
func checkContextName(name string) error {
	why := ""
	switch {
	case !utf8.ValidString(name):
		why = "is not valid UTF-8"
	case strings.IndexByte(name, 0) >= 0:
		why = "contains NUL"
	case strings.IndexByte(name, ':') < 1:
		why = "has no namespace (want NAMESPACE:NAME)"
	default:
		return nil
	}
	return fmt.Errorf("name %s %s", quoteName(name), why)
}

// quoteName quotes a server-supplied name for a message, cut short.
func quoteName(s string) string {
	const show = 64
	if len(s) > show {
		return strconv.Quote(s[:show]) + "..."
	}
	return strconv.Quote(s)
}

// simpleReply is a simple reply of the transmission phase: the error (0
// for success) and the cookie of the request it answers. The data a simple
// reply to NBD_CMD_READ carries is not part of the record.
type simpleReply struct {
	Error  uint32
	Cookie uint64
}

// MarshalBinary encodes the reply.
func (r simpleReply) MarshalBinary() ([]byte, error) {
	return put(nil, magicSimpleReply, r.Error, r.Cookie), nil
}

// UnmarshalBinary decodes the reply.
func (r *simpleReply) UnmarshalBinary(b []byte) error {
	if err := wantLen("simple reply", len(b), simpleReplyLen); err != nil {
		return err
	}
	if m := binary.BigEndian.Uint32(b); m != magicSimpleReply {
		return protocolError("bad simple reply magic %#08x, want %#08x", m, magicSimpleReply)
	}
	r.Error, r.Cookie = binary.BigEndian.Uint32(b[4:]), binary.BigEndian.Uint64(b[8:])
	return nil
}

// chunkHeader opens every structured reply chunk. UnmarshalBinary enforces
// the payload length each chunk type allows, so that no payload is read
// before its length is known to be sane.
type chunkHeader struct {
	Flags  uint16 // such as chunkFlagDone; unknown flags are kept
	Type   uint16 // such as chunkBlockStatus
	Cookie uint64
	Length uint32
}

// MarshalBinary encodes the header.
func (h chunkHeader) MarshalBinary() ([]byte, error) {
	return put(nil, magicStructuredReply, h.Flags, h.Type, h.Cookie, h.Length), nil
}

// UnmarshalBinary decodes the header. It refuses a chunk type this client
// does not know unless it is an error type (bit 15), which the spec lets a
// client read as an error.
func (h *chunkHeader) UnmarshalBinary(b []byte) error {
	if err := wantLen("structured reply chunk header", len(b), chunkHeaderLen); err != nil {
		return err
	}
	if m := binary.BigEndian.Uint32(b); m != magicStructuredReply {
		return protocolError("bad structured reply magic %#08x, want %#08x", m, magicStructuredReply)
	}
	flags, typ, n := binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), binary.BigEndian.Uint32(b[16:])
	if err := checkChunkLength(flags, typ, n); err != nil {
		return err
	}
	h.Flags, h.Type, h.Cookie, h.Length = flags, typ, binary.BigEndian.Uint64(b[8:]), n
	return nil
}

// checkChunkLength applies the payload length rules of each chunk type.
func checkChunkLength(flags, typ uint16, n uint32) error {
	name := chunkTypeName(typ)
	var lo, hi uint32 // the payload lengths allowed
	switch {
	case typ == chunkNone:
		if n != 0 {
			return protocolError("%s carries a %d-byte payload, want none", name, n)
		}
		if flags&chunkFlagDone == 0 {
			return protocolError("%s without NBD_REPLY_FLAG_DONE", name)
		}
		return nil
	case typ == chunkOffsetHole:
		if n != offsetHoleLen {
			return protocolError("%s of %d bytes, want %d", name, n, offsetHoleLen)
		}
		return nil
	case typ == chunkBlockStatus:
		if n < contextIDLen+descriptorLen || n > maxStatusPayload || (n-contextIDLen)%descriptorLen != 0 {
			return protocolError("%s of %d bytes, want 4 + 8 × (1 to %d descriptors)", name, n, maxExtentsPerChunk)
		}
		return nil
	case typ == chunkOffsetData:
		lo, hi = offsetLen+1, offsetLen+maxDataChunk
	case typ == chunkErrorOffset:
		lo, hi = errorChunkLen+offsetLen, maxErrorChunk
	case typ&chunkErrBit != 0:
		lo, hi = errorChunkLen, maxErrorChunk
	default:
		return protocolError("unknown chunk type %s", name)
	}
	if n < lo || n > hi {
		return protocolError("%s of %d bytes, want %d to %d", name, n, lo, hi)
	}
	return nil
}

// offsetData is the payload of NBD_REPLY_TYPE_OFFSET_DATA: data read at
// Offset. A session reads only the offset as a record and streams the data.
type offsetData struct {
	Offset uint64
	Data   []byte
}

// MarshalBinary encodes the payload.
func (d offsetData) MarshalBinary() ([]byte, error) { return put(nil, d.Offset, d.Data), nil }

// UnmarshalBinary decodes the payload; Data refers to b.
func (d *offsetData) UnmarshalBinary(b []byte) error {
	if err := checkChunkLength(0, chunkOffsetData, uint32(min(len(b), math.MaxUint32))); err != nil {
		return err
	}
	d.Offset, d.Data = binary.BigEndian.Uint64(b), b[offsetLen:]
	return nil
}

// offsetHole is the payload of NBD_REPLY_TYPE_OFFSET_HOLE: Size bytes of
// zeroes at Offset.
type offsetHole struct {
	Offset uint64
	Size   uint32
}

// MarshalBinary encodes the payload.
func (h offsetHole) MarshalBinary() ([]byte, error) { return put(nil, h.Offset, h.Size), nil }

// UnmarshalBinary decodes the payload.
func (h *offsetHole) UnmarshalBinary(b []byte) error {
	if err := wantLen(chunkTypeName(chunkOffsetHole), len(b), offsetHoleLen); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(b[offsetLen:])
	if size == 0 {
		return protocolError("%s of size 0", chunkTypeName(chunkOffsetHole))
	}
	h.Offset, h.Size = binary.BigEndian.Uint64(b), size
	return nil
}

// descriptor is one extent of NBD_REPLY_TYPE_BLOCK_STATUS: its length and
// its status flags in the context.
type descriptor struct {
	Length uint32
	Flags  uint32
}

// decodeDescriptor decodes one descriptor from the first descriptorLen
// bytes of b; a zero length is a protocol violation.
func decodeDescriptor(b []byte) (descriptor, error) {
	d := descriptor{Length: binary.BigEndian.Uint32(b), Flags: binary.BigEndian.Uint32(b[4:])}
	if d.Length == 0 {
		return d, protocolError("block status descriptor of length 0")
	}
	return d, nil
}

// blockStatus is the payload of NBD_REPLY_TYPE_BLOCK_STATUS: the context's
// ID and one or more descriptors. A session reads the ID and streams the
// descriptors in extentBatch pieces with decodeDescriptor; this record is
// the whole payload at once, for tests and tapes.
type blockStatus struct {
	ContextID   uint32
	Descriptors []descriptor
}

// MarshalBinary encodes the payload.
func (s blockStatus) MarshalBinary() ([]byte, error) {
	b := put(nil, s.ContextID)
	for _, d := range s.Descriptors {
		b = put(b, d.Length, d.Flags)
	}
	return b, nil
}

// UnmarshalBinary decodes the payload.
func (s *blockStatus) UnmarshalBinary(b []byte) error {
	if err := checkChunkLength(0, chunkBlockStatus, uint32(min(len(b), math.MaxUint32))); err != nil {
		return err
	}
	ds := make([]descriptor, 0, (len(b)-contextIDLen)/descriptorLen)
	for rest := b[contextIDLen:]; len(rest) > 0; rest = rest[descriptorLen:] {
		d, err := decodeDescriptor(rest)
		if err != nil {
			return err
		}
		ds = append(ds, d)
	}
	s.ContextID, s.Descriptors = binary.BigEndian.Uint32(b), ds
	return nil
}

// errorChunk is the payload of an error chunk: NBD_REPLY_TYPE_ERROR
// (HasOffset false) or NBD_REPLY_TYPE_ERROR_OFFSET (HasOffset true, with
// the offset after the message). The error must be nonzero and the message
// at most MaxStringSize bytes; the lengths must add up exactly.
type errorChunk struct {
	Error     uint32
	Message   string
	HasOffset bool
	Offset    uint64
}

// MarshalBinary encodes the payload.
func (e errorChunk) MarshalBinary() ([]byte, error) {
	b := put(nil, e.Error, uint16(len(e.Message)), e.Message)
	if e.HasOffset {
		b = put(b, e.Offset)
	}
	return b, nil
}

// UnmarshalBinary decodes the payload: with exactly 8 bytes after the
// message it is an NBD_REPLY_TYPE_ERROR_OFFSET, with none an
// NBD_REPLY_TYPE_ERROR. unmarshalErrorChunk decodes by chunk type.
func (e *errorChunk) UnmarshalBinary(b []byte) error {
	typ := chunkError
	if len(b) >= errorChunkLen && len(b)-errorChunkLen-int(binary.BigEndian.Uint16(b[4:])) == offsetLen {
		typ = chunkErrorOffset
	}
	d, err := unmarshalErrorChunk(b, typ)
	if err == nil {
		*e = d
	}
	return err
}

// unmarshalErrorChunk decodes the payload of an error chunk of type typ;
// for an error type this client does not know, what follows the message is
// skipped.
func unmarshalErrorChunk(b []byte, typ uint16) (errorChunk, error) {
	name := chunkTypeName(typ)
	if len(b) < errorChunkLen {
		return errorChunk{}, protocolError("%s of %d bytes, too short for the error and message length", name, len(b))
	}
	errno, n := binary.BigEndian.Uint32(b), int(binary.BigEndian.Uint16(b[4:]))
	rest := len(b) - errorChunkLen
	if n > rest {
		return errorChunk{}, protocolError("%s message length %d exceeds the %d bytes left", name, n, rest)
	}
	if err := checkString(name+" message", n); err != nil {
		return errorChunk{}, err
	}
	tail := b[errorChunkLen+n:]
	var offset uint64
	switch typ {
	case chunkError:
		if len(tail) != 0 {
			return errorChunk{}, protocolError("%s has %d bytes after its message", name, len(tail))
		}
	case chunkErrorOffset:
		if len(tail) != offsetLen {
			return errorChunk{}, protocolError("%s has %d bytes after its message, want the 8-byte offset", name, len(tail))
		}
		offset = binary.BigEndian.Uint64(tail)
	}
	if errno == 0 {
		return errorChunk{}, protocolError("%s with error value 0", name)
	}
	return errorChunk{Error: errno, Message: string(b[errorChunkLen : errorChunkLen+n]), HasOffset: typ == chunkErrorOffset, Offset: offset}, nil
}
