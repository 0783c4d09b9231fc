package negotiate

import (
	"bytes"
	"encoding"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// record is what every wire record implements.
type record interface {
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
}

// unhex decodes hexadecimal with spaces between fields; "Z*n" stands for n
// zero bytes.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var b []byte
	for _, f := range strings.Fields(s) {
		if n, ok := strings.CutPrefix(f, "Z*"); ok {
			switch n {
			case "8":
				b = append(b, make([]byte, 8)...)
			case "124":
				b = append(b, make([]byte, zeroPad)...)
			default:
				t.Fatalf("unhex: %q", f)
			}
			continue
		}
		d, err := hex.DecodeString(f)
		if err != nil {
			t.Fatalf("unhex %q: %v", f, err)
		}
		b = append(b, d...)
	}
	return b
}

func ptr[T any](v T) *T { return &v }

// codecCases are records with their exact encodings, field by field.
func codecCases() []struct {
	rec record
	hex string
} {
	return []struct {
		rec record
		hex string
	}{
		{&newstyleGreeting{Flags: hflagFixedNewstyle | hflagNoZeroes}, "4e42444d41474943 49484156454f5054 0003"},
		{&newstyleGreeting{Flags: 0x8000}, "4e42444d41474943 49484156454f5054 8000"},
		{&oldstyleGreeting{Size: 1 << 20, Flags: FlagHasFlags | FlagReadOnly}, "4e42444d41474943 0000420281861253 0000000000100000 00000003 Z*124"},
		{ptr(clientFlags(cflagFixedNewstyle | cflagNoZeroes)), "00000003"},
		{&optionRequest{Option: OptGo, Data: []byte("ab")}, "49484156454f5054 00000007 00000002 6162"},
		{&optionRequest{Option: OptAbort, Data: []byte{}}, "49484156454f5054 00000002 00000000"},
		{&infoRequest{Name: "rootfs", Infos: []uint16{infoName, infoBlockSize}}, "00000006 726f6f746673 0002 0001 0003"},
		{&infoRequest{}, "00000000 0000"},
		{&replyHeader{Option: OptList, Type: RepServer, Length: 9}, "0003e889045565a9 00000003 00000002 00000009"},
		{&replyHeader{Option: OptGo, Type: RepErrUnknown, Length: maxReplyPayload}, "0003e889045565a9 00000007 80000006 00010000"},
		{&replyHeader{Option: OptStartTLS, Type: RepAck}, "0003e889045565a9 00000005 00000001 00000000"},
		{&serverReply{Name: "a", Description: "bc"}, "00000001 61 6263"},
		{&serverReply{}, "00000000"},
		{&exportInfo{Size: 1 << 30, Flags: FlagHasFlags | FlagSendFlush}, "0000 0000000040000000 0005"},
		{&blockSizeInfo{Min: 512, Pref: 4096, Max: 32 << 20}, "0003 00000200 00001000 02000000"},
		{ptr(nameInfo("rootfs")), "0001 726f6f746673"},
		{ptr(descriptionInfo("")), "0002"},
		{&otherInfo{Type: 99, Data: []byte("x")}, "0063 78"},
		{&exportNameReply{Size: 1 << 20, Flags: FlagHasFlags}, "0000000000100000 0001"},
		{&exportNameReply{Size: 1 << 20, Flags: FlagHasFlags, Zeroes: true}, "0000000000100000 0001 Z*124"},
		{&request{Type: cmdDisc}, "25609513 0000 0002 Z*8 Z*8 00000000"},
		{&request{Flags: 1, Type: 1, Cookie: 7, Offset: 512, Length: 4096}, "25609513 0001 0001 0000000000000007 0000000000000200 00001000"},
		{&request{Type: cmdBlockStatus, Cookie: 1, Length: 1 << 30}, "25609513 0000 0007 0000000000000001 Z*8 40000000"},
		{&metaContextRequest{Name: "disk", Queries: []string{"base:allocation"}}, "00000004 6469736b 00000001 0000000f 626173653a616c6c6f636174696f6e"},
		{&metaContextRequest{Name: "", Queries: []string{"a:", "qemu:"}}, "00000000 00000002 00000002 613a 00000005 71656d753a"},
		{&metaContextRequest{Name: "x"}, "00000001 78 00000000"},
		{&metaContextReply{ID: 1, Name: "base:allocation"}, "00000001 626173653a616c6c6f636174696f6e"},
		{&metaContextReply{ID: 0xfffffffe, Name: "qemu:dirty-bitmap:b0"}, "fffffffe 71656d753a64697274792d6269746d61703a6230"},
		{&simpleReply{Error: 22, Cookie: 7}, "67446698 00000016 0000000000000007"},
		{&simpleReply{}, "67446698 00000000 Z*8"},
		{&chunkHeader{Flags: chunkFlagDone, Type: chunkNone, Cookie: 1}, "668e33ef 0001 0000 0000000000000001 00000000"},
		{&chunkHeader{Type: chunkBlockStatus, Cookie: 2, Length: 12}, "668e33ef 0000 0005 0000000000000002 0000000c"},
		{&chunkHeader{Type: chunkBlockStatus, Length: maxStatusPayload}, "668e33ef 0000 0005 Z*8 00800004"},
		{&chunkHeader{Flags: 0x8001, Type: chunkOffsetData, Cookie: 3, Length: 9}, "668e33ef 8001 0001 0000000000000003 00000009"},
		{&chunkHeader{Type: chunkOffsetData, Length: offsetLen + maxDataChunk}, "668e33ef 0000 0001 Z*8 04000008"},
		{&chunkHeader{Type: chunkOffsetHole, Length: 12}, "668e33ef 0000 0002 Z*8 0000000c"},
		{&chunkHeader{Flags: chunkFlagDone, Type: chunkError, Cookie: 4, Length: 6}, "668e33ef 0001 8001 0000000000000004 00000006"},
		{&chunkHeader{Type: chunkErrorOffset, Length: 14}, "668e33ef 0000 8002 Z*8 0000000e"},
		{&chunkHeader{Type: chunkErrBit | 42, Length: maxErrorChunk}, "668e33ef 0000 802a Z*8 00001046"},
		{&offsetData{Offset: 512, Data: []byte("ab")}, "0000000000000200 6162"},
		{&offsetHole{Offset: 4096, Size: 512}, "0000000000001000 00000200"},
		{&blockStatus{ContextID: 1, Descriptors: []descriptor{{1 << 20, StateHole | StateZero}, {64 << 10, 0}}}, "00000001 00100000 00000003 00010000 00000000"},
		{&errorChunk{Error: 5, Message: "bad"}, "00000005 0003 626164"},
		{&errorChunk{Error: 22, HasOffset: true, Offset: 8}, "00000016 0000 0000000000000008"},
	}
}

// TestCodecBytes checks every record against its exact encoding, both ways.
func TestCodecBytes(t *testing.T) {
	for _, tc := range codecCases() {
		want := unhex(t, tc.hex)
		got, err := tc.rec.MarshalBinary()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%T %+v encodes as\n %x, %v, want\n %x", tc.rec, tc.rec, got, err, want)
		}
		back := reflect.New(reflect.TypeOf(tc.rec).Elem()).Interface().(record)
		if err := back.UnmarshalBinary(want); err != nil || !reflect.DeepEqual(back, tc.rec) {
			t.Errorf("%x decodes as %T %+v, %v; want %+v", want, back, back, err, tc.rec)
		}
		switch tc.rec.(type) {
		case *exportInfo, *blockSizeInfo, *nameInfo, *descriptionInfo, *otherInfo:
			if info, err := unmarshalInfo(want); err != nil || !reflect.DeepEqual(info, tc.rec) {
				t.Errorf("unmarshalInfo(%x) = %T %+v, %v; want %+v", want, info, info, err, tc.rec)
			}
		}
	}
}

// codecErrors are encodings each record refuses, with the error's text.
func codecErrors() []struct {
	rec  record
	hex  string
	want string
} {
	return []struct {
		rec  record
		hex  string
		want string
	}{
		{new(newstyleGreeting), "4e42444d41474943 49484156454f5054 00", "newstyle greeting of 17 bytes, want 18"},
		{new(newstyleGreeting), "1122334455667788 49484156454f5054 0001", "bad greeting magic 0x1122334455667788"},
		{new(newstyleGreeting), "4e42444d41474943 4948415645000000 0001", "after NBDMAGIC"},
		{new(newstyleGreeting), "4e42444d41474943 0000420281861253 0001", "oldstyle magic in a newstyle greeting"},
		{new(oldstyleGreeting), "4e42444d41474943 49484156454f5054 0000000000100000 00000001 Z*124", "newstyle magic in an oldstyle greeting"},
		{new(oldstyleGreeting), "4e42444d41474943 0000420281861253 0000000000100000 00010001 Z*124", "oldstyle export flags 0x00010001"},
		{new(oldstyleGreeting), "4e42444d41474943 0000420281861253 8000000000000000 00000001 Z*124", "export size 9223372036854775808 is larger than 2^63-1"},
		{new(oldstyleGreeting), "4e42444d41474943 0000420281861253 0000000000100000 00000001", "oldstyle greeting of 28 bytes, want 152"},
		{new(clientFlags), "000001", "client flags of 3 bytes, want 4"},
		{new(optionRequest), "49484156454f5054 00000007 0000", "option request of 14 bytes, too short"},
		{new(optionRequest), "49484156454f5055 00000007 00000000", "bad option magic 0x49484156454f5055"},
		{new(optionRequest), "49484156454f5054 00000007 00000002 61", "option data length 2, but 1 bytes follow"},
		{new(infoRequest), "00000000 00", "info request of 5 bytes, too short"},
		{new(infoRequest), "00000007 726f6f746673 0000", "info request name length 7 exceeds"},
		{new(infoRequest), "00000001 61 0002 0001", "info request of 2 information types in 2 bytes"},
		{new(replyHeader), "0003e889045565a9 00000007 00000001 000000", "option reply header of 19 bytes, want 20"},
		{new(replyHeader), "0003e889045565a8 00000007 00000001 00000000", "bad option reply magic 0x0003e889045565a8"},
		{new(replyHeader), "0003e889045565a9 00000007 00000003 ffffffff", "NBD_REP_INFO reply claims a 4294967295-byte payload, more than the 65536 allowed"},
		{new(replyHeader), "0003e889045565a9 00000007 00000003 00010001", "claims a 65537-byte payload"},
		{new(replyHeader), "0003e889045565a9 00000007 00000001 00000004", "NBD_REP_ACK carries a 4-byte payload, want none"},
		{new(serverReply), "0000", "NBD_REP_SERVER of 2 bytes, too short for the name length"},
		{new(serverReply), "00000064 73686f7274", "NBD_REP_SERVER name length 100 exceeds the 5-byte payload"},
		{new(serverReply), "ffffffff 78", "NBD_REP_SERVER name length 4294967295 exceeds"},
		{new(exportInfo), "0000 0000000000000001 0001 00", "NBD_INFO_EXPORT of 13 bytes, want 12"},
		{new(exportInfo), "0000 0000000000000001 01", "NBD_INFO_EXPORT of 11 bytes, want 12"},
		{new(exportInfo), "0000 ffffffffffffffff 0001", "export size 18446744073709551615 is larger than 2^63-1"},
		{new(exportInfo), "0003 0000000000000001 0001", "NBD_INFO_BLOCK_SIZE where NBD_INFO_EXPORT was expected"},
		{new(exportInfo), "00", "NBD_REP_INFO of 1 bytes, too short for the information type"},
		{new(blockSizeInfo), "0003 00000200 00001000 00100000 00000000", "NBD_INFO_BLOCK_SIZE of 18 bytes, want 14"},
		{new(nameInfo), "0002 61", "NBD_INFO_DESCRIPTION where NBD_INFO_NAME was expected"},
		{new(descriptionInfo), "", "NBD_REP_INFO of 0 bytes, too short"},
		{new(otherInfo), "07", "NBD_REP_INFO of 1 bytes, too short"},
		{new(exportNameReply), "0000000000100000 00", "NBD_OPT_EXPORT_NAME reply of 9 bytes, want 10 or 134"},
		{new(exportNameReply), "8000000000000000 0001", "export size 9223372036854775808"},
		{new(request), "25609513 0000 0002", "request of 8 bytes, want 28"},
		{new(request), "25609514 0000 0002 Z*8 Z*8 00000000", "bad request magic 0x25609514"},
		{new(metaContextRequest), "000000", "meta context request export name: 3 bytes, too short for the length"},
		{new(metaContextRequest), "00000006 78 00000000", "meta context request export name length 6 exceeds the 5 bytes left"},
		{new(metaContextRequest), "00000001 78 000000", "meta context request of 8 bytes, too short for the query count"},
		{new(metaContextRequest), "00000001 78 00000002 00000001 61", "meta context request of 2 queries in 5 bytes"},
		{new(metaContextRequest), "00000001 78 ffffffff", "meta context request of 4294967295 queries in 0 bytes"},
		{new(metaContextRequest), "00000001 78 00000001 00000002 61", "meta context query length 2 exceeds the 1 bytes left"},
		{new(metaContextRequest), "00000001 78 00000001 00000001 61 ff", "meta context request has 1 bytes after its queries"},
		{new(metaContextReply), "00000001", "NBD_REP_META_CONTEXT of 4 bytes, too short for a context ID and a name"},
		{new(metaContextReply), "00000001 613aff", `NBD_REP_META_CONTEXT name "a:\xff" is not valid UTF-8`},
		{new(metaContextReply), "00000001 613a00", `NBD_REP_META_CONTEXT name "a:\x00" contains NUL`},
		{new(metaContextReply), "00000001 6e6f6e616d657370616365", `NBD_REP_META_CONTEXT name "nonamespace" has no namespace`},
		{new(metaContextReply), "00000001 3a78", `name ":x" has no namespace`},
		{new(simpleReply), "67446698 00000000 0000", "simple reply of 10 bytes, want 16"},
		{new(simpleReply), "668e33ef 00000000 Z*8", "bad simple reply magic 0x668e33ef, want 0x67446698"},
		{new(chunkHeader), "668e33ef 0001 0000 Z*8 000000", "structured reply chunk header of 19 bytes, want 20"},
		{new(chunkHeader), "67446698 0001 0000 Z*8 00000000", "bad structured reply magic 0x67446698"},
		{new(chunkHeader), "668e33ef 0001 0000 Z*8 00000004", "NBD_REPLY_TYPE_NONE carries a 4-byte payload, want none"},
		{new(chunkHeader), "668e33ef 0000 0000 Z*8 00000000", "NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE"},
		{new(chunkHeader), "668e33ef 0000 0001 Z*8 00000008", "NBD_REPLY_TYPE_OFFSET_DATA of 8 bytes, want 9 to 67108872"},
		{new(chunkHeader), "668e33ef 0000 0001 Z*8 04000009", "NBD_REPLY_TYPE_OFFSET_DATA of 67108873 bytes"},
		{new(chunkHeader), "668e33ef 0000 0002 Z*8 0000000b", "NBD_REPLY_TYPE_OFFSET_HOLE of 11 bytes, want 12"},
		{new(chunkHeader), "668e33ef 0000 0005 Z*8 00000004", "NBD_REPLY_TYPE_BLOCK_STATUS of 4 bytes, want 4 + 8 × (1 to 1048576 descriptors)"},
		{new(chunkHeader), "668e33ef 0000 0005 Z*8 0000000d", "NBD_REPLY_TYPE_BLOCK_STATUS of 13 bytes"},
		{new(chunkHeader), "668e33ef 0000 0005 Z*8 0080000c", "NBD_REPLY_TYPE_BLOCK_STATUS of 8388620 bytes"},
		{new(chunkHeader), "668e33ef 0000 0005 Z*8 ffffffff", "NBD_REPLY_TYPE_BLOCK_STATUS of 4294967295 bytes"},
		{new(chunkHeader), "668e33ef 0000 8001 Z*8 00000005", "NBD_REPLY_TYPE_ERROR of 5 bytes, want 6 to 4166"},
		{new(chunkHeader), "668e33ef 0000 8001 Z*8 00001047", "NBD_REPLY_TYPE_ERROR of 4167 bytes"},
		{new(chunkHeader), "668e33ef 0000 8002 Z*8 0000000d", "NBD_REPLY_TYPE_ERROR_OFFSET of 13 bytes, want 14 to 4166"},
		{new(chunkHeader), "668e33ef 0000 802a Z*8 ffffffff", "NBD_REPLY_TYPE_ERROR(0x802a) of 4294967295 bytes"},
		{new(chunkHeader), "668e33ef 0000 0003 Z*8 00000000", "unknown chunk type NBD_REPLY_TYPE(3)"},
		{new(chunkHeader), "668e33ef 0000 0006 Z*8 0000000c", "unknown chunk type NBD_REPLY_TYPE(6)"},
		{new(offsetData), "0000000000000200", "NBD_REPLY_TYPE_OFFSET_DATA of 8 bytes, want 9"},
		{new(offsetHole), "0000000000001000 00000000", "NBD_REPLY_TYPE_OFFSET_HOLE of size 0"},
		{new(offsetHole), "0000000000001000 000002", "NBD_REPLY_TYPE_OFFSET_HOLE of 11 bytes, want 12"},
		{new(blockStatus), "00000001", "NBD_REPLY_TYPE_BLOCK_STATUS of 4 bytes"},
		{new(blockStatus), "00000001 00000200 00000000 00", "NBD_REPLY_TYPE_BLOCK_STATUS of 13 bytes"},
		{new(blockStatus), "00000001 00000200 00000000 00000000 00000003", "block status descriptor of length 0"},
		{new(errorChunk), "00000000 0000", "NBD_REPLY_TYPE_ERROR with error value 0"},
		{new(errorChunk), "00000005 00", "NBD_REPLY_TYPE_ERROR of 5 bytes, too short"},
		{new(errorChunk), "00000005 0004 616263", "NBD_REPLY_TYPE_ERROR message length 4 exceeds the 3 bytes left"},
		{new(errorChunk), "00000005 0000 616263", "NBD_REPLY_TYPE_ERROR has 3 bytes after its message"},
		{new(errorChunk), "00000000 0000 0000000000000008", "NBD_REPLY_TYPE_ERROR_OFFSET with error value 0"},
	}
}

// longStrings are the string limits, too long to write out in codecErrors.
func longStrings() []struct {
	rec  record
	b    []byte
	want string
} {
	long := strings.Repeat("n", MaxStringSize+1)
	return []struct {
		rec  record
		b    []byte
		want string
	}{
		{new(nameInfo), tape(infoName, long), "NBD_INFO_NAME of 4097 bytes, longer than the protocol's limit of 4096"},
		{new(descriptionInfo), tape(infoDescription, long), "NBD_INFO_DESCRIPTION of 4097 bytes, longer than"},
		{new(serverReply), tape(uint32(len(long)), long), "NBD_REP_SERVER string longer than 4096 bytes"},
		{new(serverReply), tape(uint32(1), "x", long), "NBD_REP_SERVER string longer than 4096 bytes"},
		{new(serverReply), tape(uint32(1), "x", long, long), "NBD_REP_SERVER of 8199 bytes, longer than a name and a description of 4096 bytes each"},
		{new(infoRequest), tape(uint32(len(long)), long, uint16(0)), "export name of 4097 bytes, longer than"},
		{new(metaContextRequest), tape(uint32(len(long)), long, uint32(0)), "meta context request export name of 4097 bytes, longer than"},
		{new(metaContextRequest), tape(uint32(0), uint32(1), uint32(len(long)), long), "meta context query of 4097 bytes, longer than"},
		{new(metaContextReply), tape(uint32(1), "a:", long), "NBD_REP_META_CONTEXT name of 4099 bytes, longer than"},
		{new(errorChunk), tape(uint32(5), uint16(len(long)), long), "NBD_REPLY_TYPE_ERROR message of 4097 bytes, longer than"},
	}
}

// TestCodecErrors checks that each record refuses what the protocol forbids,
// with the message the handshake reports.
func TestCodecErrors(t *testing.T) {
	type errCase struct {
		rec  record
		b    []byte
		want string
	}
	var cases []errCase
	for _, tc := range codecErrors() {
		cases = append(cases, errCase{tc.rec, unhex(t, tc.hex), tc.want})
	}
	for _, tc := range longStrings() {
		cases = append(cases, errCase(tc))
	}
	for _, tc := range cases {
		err := tc.rec.UnmarshalBinary(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrProtocol) {
			t.Errorf("%T from %.40x: error %v, want a protocol violation with %q", tc.rec, tc.b, err, tc.want)
		}
	}
	if _, err := unmarshalInfo([]byte{0}); err == nil || !strings.Contains(err.Error(), "NBD_REP_INFO of 1 bytes, too short") {
		t.Errorf("unmarshalInfo of 1 byte: %v", err)
	}
}

// decodeAs decodes b as a *T.
func decodeAs[T any, P interface {
	*T
	record
}](b []byte) (encoding.BinaryMarshaler, error) {
	p := P(new(T))
	return p, p.UnmarshalBinary(b)
}

// codecKinds are the decoders FuzzCodec picks from. padded: the last zeroPad
// bytes are reserved and not checked, so they need not survive a round trip.
func codecKinds() []struct {
	decode func([]byte) (encoding.BinaryMarshaler, error)
	padded bool
} {
	return []struct {
		decode func([]byte) (encoding.BinaryMarshaler, error)
		padded bool
	}{
		{decodeAs[newstyleGreeting], false},
		{decodeAs[oldstyleGreeting], true},
		{decodeAs[clientFlags], false},
		{decodeAs[optionRequest], false},
		{decodeAs[infoRequest], false},
		{decodeAs[replyHeader], false},
		{decodeAs[serverReply], false},
		{decodeAs[exportInfo], false},
		{decodeAs[blockSizeInfo], false},
		{decodeAs[nameInfo], false},
		{decodeAs[descriptionInfo], false},
		{decodeAs[otherInfo], false},
		{decodeAs[exportNameReply], true},
		{decodeAs[request], false},
		{func(b []byte) (encoding.BinaryMarshaler, error) { return unmarshalInfo(b) }, false},
		{decodeAs[metaContextRequest], false},
		{decodeAs[metaContextReply], false},
		{decodeAs[simpleReply], false},
		{decodeAs[chunkHeader], false},
		{decodeAs[offsetData], false},
		{decodeAs[offsetHole], false},
		{decodeAs[blockStatus], false},
		{decodeAs[errorChunk], false},
	}
}

// FuzzCodec decodes arbitrary bytes as one record type. A refusal must be a
// protocol violation; an accepted record must encode back to the same bytes
// (up to reserved padding) and decode again to the same value.
func FuzzCodec(f *testing.F) {
	var seeds [][]byte
	for _, tc := range codecCases() {
		seeds = append(seeds, unhex(f, tc.hex))
	}
	for _, tc := range codecErrors() {
		seeds = append(seeds, unhex(f, tc.hex))
	}
	for k := range codecKinds() {
		for _, b := range seeds {
			f.Add(uint8(k), b)
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		kinds := codecKinds()
		k := kinds[int(kind)%len(kinds)]
		rec, err := k.decode(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol violation", err)
			}
			return
		}
		enc, err := rec.MarshalBinary()
		if err != nil {
			t.Fatalf("%T %+v does not encode: %v", rec, rec, err)
		}
		canon := data
		if k.padded && len(data) >= zeroPad {
			canon = append(bytes.Clone(data[:len(data)-zeroPad]), make([]byte, zeroPad)...)
		}
		if !bytes.Equal(enc, canon) {
			t.Fatalf("%x decodes as %T %+v, which encodes as %x", data, rec, rec, enc)
		}
		again, err := k.decode(enc)
		if err != nil || !reflect.DeepEqual(again, rec) {
			t.Fatalf("%T %+v encodes as %x, which decodes as %+v, %v", rec, rec, enc, again, err)
		}
	})
}

// TestUnknownErrorChunk checks that an error chunk of a type this client
// does not know is read as an error, skipping what follows the message.
func TestUnknownErrorChunk(t *testing.T) {
	b := unhex(t, "0000001c 0002 6869 0102030405")
	e, err := unmarshalErrorChunk(b, chunkErrBit|42)
	if err != nil || e.Error != 28 || e.Message != "hi" || e.HasOffset {
		t.Errorf("unmarshalErrorChunk = %+v, %v; want ENOSPC \"hi\"", e, err)
	}
	if _, err := unmarshalErrorChunk(b, chunkError); err == nil || !strings.Contains(err.Error(), "has 5 bytes after its message") {
		t.Errorf("as NBD_REPLY_TYPE_ERROR: %v", err)
	}
	if _, err := unmarshalErrorChunk(unhex(t, "0000001c 0003 6869"), chunkErrBit|42); err == nil || !errors.Is(err, ErrProtocol) {
		t.Errorf("message past the payload: %v", err)
	}
}
