package negotiate

import (
	"context"
	"errors"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// disk is the export of the query tests: 8 MiB, offering base:allocation
// (ID 1) and a dirty bitmap (ID 2).
var disk = fakeExport{
	name: "disk", size: 8 << 20, flags: FlagHasFlags | FlagSendDF,
	minB: 1, prefB: 4096, maxB: 32 << 20,
	contexts: []string{ContextBaseAllocation, "qemu:dirty-bitmap:b0"},
}

// queryServer is a structured server of disk (and exports) whose
// transmission phase is transmit.
func queryServer(transmit func(f *fake), exports ...fakeExport) *goodServer {
	return &goodServer{style: "fixed", noZeroes: true, structured: true,
		exports: append([]fakeExport{disk}, exports...), transmission: transmit}
}

// openQuery runs OpenQuery for disk's base:allocation against srv.
func openQuery(t *testing.T, srv *goodServer, opts Options) (*Query, *run, error) {
	t.Helper()
	r := startFake(srv.serve)
	if opts.Export == "" {
		opts.Export = "disk"
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second
	}
	q, err := OpenQuery(context.Background(), r.cli, opts, ContextBaseAllocation)
	return q, r, err
}

// model is an allocation map: extents covering an export, in order.
type model []Extent

// answer writes the reply to a block status request from m: at most per
// descriptors (0: all), the last one running past the request when m's
// extent does.
func (m model) answer(f *fake, req request, per int) {
	var ds []descriptor
	end := req.Offset + uint64(req.Length)
	for _, e := range m {
		if e.Offset+e.Length <= req.Offset || e.Offset >= end {
			continue
		}
		start := max(e.Offset, req.Offset)
		ds = append(ds, descriptor{Length: uint32(min(e.Offset+e.Length-start, 1<<31)), Flags: e.Flags})
		if per > 0 && len(ds) == per {
			break
		}
	}
	f.write(statusTape(0, req.Cookie, 1, ds...))
	f.write(noneTape(req.Cookie))
}

// serveModel answers every block status request from m, at most per
// descriptors a reply, until NBD_CMD_DISC; it records the requests.
func serveModel(m model, per int, reqs *[]request) func(f *fake) {
	return func(f *fake) {
		for {
			req, ok := f.readRequest()
			if !ok {
				return
			}
			*reqs = append(*reqs, req)
			if req.Type == cmdDisc {
				f.drain()
				return
			}
			m.answer(f, req, per)
		}
	}
}

// merged merges adjacent extents with the same flags.
func merged(es []Extent) []Extent {
	var out []Extent
	for _, e := range es {
		if n := len(out); n > 0 && out[n-1].Flags == e.Flags && out[n-1].Offset+out[n-1].Length == e.Offset {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out
}

func TestQueryMap(t *testing.T) {
	const hz = StateHole | StateZero
	big := fakeExport{name: "big", size: 3<<30 + 4096, flags: FlagHasFlags, contexts: []string{ContextBaseAllocation}}
	for _, tc := range []struct {
		name   string
		export fakeExport
		m      model
		per    int
	}{{
		name:   "one reply",
		export: disk,
		m:      model{{0, 1 << 20, hz}, {1 << 20, 64 << 10, 0}, {1<<20 + 64<<10, 8<<20 - (1<<20 + 64<<10), hz}},
	}, {
		name:   "one descriptor a reply",
		export: disk,
		m:      model{{0, 1 << 20, hz}, {1 << 20, 64 << 10, 0}, {1<<20 + 64<<10, 8<<20 - (1<<20 + 64<<10), StateZero}},
		per:    1,
	}, {
		name:   "windows of 1 GiB, extents across them",
		export: big,
		m:      model{{0, 1 << 20, hz}, {1 << 20, 2 << 30, 0}, {2<<30 + 1<<20, 1<<30 - 1<<20, hz}, {3 << 30, 4096, 0}},
		per:    2,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var reqs []request
			srv := queryServer(serveModel(tc.m, tc.per, &reqs), big)
			q, r, err := openQuery(t, srv, Options{Export: tc.export.name})
			if err != nil {
				t.Fatal(err)
			}
			ex := q.Export()
			if ex.Size != tc.export.size || !ex.StructuredReplies || !slices.Equal(ex.MetaContexts, []string{ContextBaseAllocation}) || ex.Path != PathGo {
				t.Errorf("export %+v", ex)
			}
			var got []Extent
			if err := q.Map(context.Background(), 0, ex.Size, func(e Extent) error {
				got = append(got, e)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := q.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			f := r.wait(t)
			if !slices.Equal(f.opts, []uint32{OptStructuredReply, OptSetMetaContext, OptGo}) {
				t.Errorf("options %v", optNames(f.opts))
			}
			if !slices.Equal(merged(got), []Extent(tc.m)) {
				t.Errorf("extents\n got %v\nwant %v", merged(got), tc.m)
			}
			// Extents follow on from each other, within the export.
			pos := uint64(0)
			for _, e := range got {
				if e.Offset != pos || e.Length == 0 {
					t.Fatalf("extent %+v at %d", e, pos)
				}
				pos += e.Length
			}
			if pos != ex.Size {
				t.Errorf("extents end at %d, want %d", pos, ex.Size)
			}
			// Requests: at most 1 GiB, each going on from the last
			// (the server described less than asked), fresh cookies,
			// the last one reaching the end, then NBD_CMD_DISC.
			if len(reqs) < 2 || reqs[len(reqs)-1].Type != cmdDisc {
				t.Fatalf("requests %+v, want NBD_CMD_DISC last", reqs)
			}
			status := reqs[:len(reqs)-1]
			for i, req := range status {
				if req.Type != cmdBlockStatus || req.Flags != 0 || req.Length > mapWindow || req.Length == 0 ||
					req.Offset+uint64(req.Length) > ex.Size || req.Cookie != uint64(i+1) || (i == 0) != (req.Offset == 0) ||
					(i > 0 && req.Offset <= status[i-1].Offset) {
					t.Errorf("request %d: %+v", i, req)
				}
			}
			if last := status[len(status)-1]; last.Offset+uint64(last.Length) != ex.Size {
				t.Errorf("last request %+v does not reach the end", last)
			}
			if tc.per == 1 && len(status) != len(tc.m) {
				t.Errorf("%d requests for %d extents one at a time", len(status), len(tc.m))
			}
		})
	}
}

// TestQueryMapRange maps part of an export, and a server whose last extent
// runs past the request: it is cut at the request's end.
func TestQueryMapRange(t *testing.T) {
	var reqs []request
	m := model{{0, 8 << 20, 0}}
	q, r, err := openQuery(t, queryServer(serveModel(m, 0, &reqs)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []Extent
	if err := q.Map(context.Background(), 4096, 8192, func(e Extent) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []Extent{{4096, 8192, 0}}) {
		t.Errorf("extents %v", got)
	}
	for _, bad := range [][2]uint64{{0, 8<<20 + 1}, {8 << 20, 1}, {1, 1<<64 - 1}} {
		if err := q.Map(context.Background(), bad[0], bad[1], func(Extent) error { return nil }); err == nil || !strings.Contains(err.Error(), "beyond the export") {
			t.Errorf("Map(%d, %d): %v", bad[0], bad[1], err)
		}
	}
	// An empty range asks nothing.
	if err := q.Map(context.Background(), 8<<20, 0, func(Extent) error { t.Error("extent for nothing"); return nil }); err != nil {
		t.Error(err)
	}
	q.Close()
	r.wait(t)
	if len(reqs) != 2 || reqs[0].Offset != 4096 || reqs[0].Length != 8192 || reqs[1].Type != cmdDisc {
		t.Errorf("requests %+v", reqs)
	}
}

// TestQueryMinBlock checks that Map keeps to the minimum block size.
func TestQueryMinBlock(t *testing.T) {
	e := disk
	e.minB, e.prefB = 4096, 4096
	srv := &goodServer{style: "fixed", structured: true, exports: []fakeExport{e}, transmission: func(f *fake) { f.drain() }}
	q, r, err := openQuery(t, srv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Map(context.Background(), 512, 4096, func(Extent) error { return nil }); err == nil || !strings.Contains(err.Error(), "not aligned to the minimum block size 4096") {
		t.Errorf("unaligned Map: %v", err)
	}
	q.Close()
	r.wait(t)
}

// TestQueryCallbackError checks that fn's error comes back as it is.
func TestQueryCallbackError(t *testing.T) {
	var reqs []request
	q, r, err := openQuery(t, queryServer(serveModel(model{{0, 4 << 20, 0}, {4 << 20, 4 << 20, 3}}, 0, &reqs)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("enough")
	if err := q.Map(context.Background(), 0, 8<<20, func(Extent) error { return stop }); err != stop {
		t.Errorf("Map: %v, want the callback's error as it is", err)
	}
	q.Close()
	r.wait(t)
}

func TestQueryNegotiation(t *testing.T) {
	refuse := func(opt, code uint32, msg string) func(f *fake) {
		return func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			for {
				o, _, ok := f.readOption()
				if !ok {
					return
				}
				switch {
				case o == opt:
					f.write(replyTape(o, code, []byte(msg)))
				case o == OptAbort:
					f.write(ackTape(o))
					f.drain()
					return
				default:
					f.write(ackTape(o))
				}
			}
		}
	}
	setThen := func(tapes ...[]byte) func(f *fake) {
		return func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.expectOption(OptStructuredReply)
			f.write(ackTape(OptStructuredReply))
			f.expectOption(OptSetMetaContext)
			for _, b := range tapes {
				f.write(b)
			}
			f.finish()
		}
	}
	for _, tc := range []struct {
		name   string
		script func(f *fake)
		is     []error
		want   string
	}{{
		name:   "no structured replies",
		script: (&goodServer{style: "fixed", exports: []fakeExport{disk}}).serve,
		is:     []error{ErrNoStructuredReplies},
		want:   "negotiate: NBD_OPT_STRUCTURED_REPLY: server does not support structured replies: server refused: NBD_REP_ERR_UNSUP: no structured replies here",
	}, {
		name:   "oldstyle",
		script: (&goodServer{style: "oldstyle", exports: []fakeExport{disk}}).serve,
		is:     []error{ErrNoStructuredReplies},
		want:   "negotiate: greeting: server does not support structured replies: the server uses oldstyle negotiation",
	}, {
		name:   "non-fixed newstyle",
		script: (&goodServer{style: "newstyle", exports: []fakeExport{disk}}).serve,
		is:     []error{ErrNoStructuredReplies},
		want:   "non-fixed newstyle",
	}, {
		name:   "structured replies refused for TLS",
		script: refuse(OptStructuredReply, RepErrTLSReqd, "TLS first"),
		is:     []error{ErrTLSRequired},
		want:   "negotiate: NBD_OPT_STRUCTURED_REPLY: server requires TLS: NBD_REP_ERR_TLS_REQD: TLS first",
	}, {
		name:   "context not offered",
		script: (&goodServer{style: "fixed", structured: true, exports: []fakeExport{withContexts(disk)}}).serve,
		is:     []error{ErrNoMetaContext},
		want:   `negotiate: NBD_OPT_SET_META_CONTEXT "disk": server does not offer metadata context "base:allocation" for this export`,
	}, {
		name:   "meta contexts unsupported",
		script: refuse(OptSetMetaContext, RepErrUnsup, ""),
		is:     []error{ErrNoMetaContext},
		want:   `server does not offer metadata context "base:allocation": server refused: NBD_REP_ERR_UNSUP`,
	}, {
		name:   "unknown export",
		script: refuse(OptSetMetaContext, RepErrUnknown, "no such export"),
		is:     []error{ErrExportNotFound},
		want:   `negotiate: NBD_OPT_SET_META_CONTEXT "disk": server refused: NBD_REP_ERR_UNKNOWN: no such export`,
	}, {
		name:   "another context",
		script: setThen(metaContextTape(OptSetMetaContext, 1, "qemu:allocation-depth"), ackTape(OptSetMetaContext)),
		is:     []error{ErrProtocol},
		want:   `NBD_REP_META_CONTEXT "qemu:allocation-depth", but the client asked for "base:allocation"`,
	}, {
		name: "two contexts for one query",
		script: setThen(metaContextTape(OptSetMetaContext, 1, ContextBaseAllocation),
			metaContextTape(OptSetMetaContext, 2, ContextBaseAllocation), ackTape(OptSetMetaContext)),
		is:   []error{ErrProtocol},
		want: `a second NBD_REP_META_CONTEXT ("base:allocation") for one query`,
	}, {
		name:   "endless contexts",
		script: endlessAfterSet(metaContextTape(OptSetMetaContext, 1, ContextBaseAllocation)),
		is:     []error{ErrProtocol},
		want:   "a second NBD_REP_META_CONTEXT",
	}, {
		name:   "bad context name",
		script: setThen(metaContextTape(OptSetMetaContext, 1, "allocation"), ackTape(OptSetMetaContext)),
		is:     []error{ErrProtocol},
		want:   `NBD_REP_META_CONTEXT name "allocation" has no namespace`,
	}, {
		name:   "reply to another option",
		script: setThen(metaContextTape(OptListMetaContext, 1, ContextBaseAllocation)),
		is:     []error{ErrProtocol},
		want:   "reply is for NBD_OPT_LIST_META_CONTEXT, but the client sent NBD_OPT_SET_META_CONTEXT",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startFake(tc.script)
			start := time.Now()
			q, err := OpenQuery(context.Background(), r.cli, Options{Export: "disk", Timeout: time.Second}, ContextBaseAllocation)
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Errorf("took %v", d)
			}
			r.wait(t)
			if q != nil || err == nil {
				t.Fatalf("OpenQuery = %v, %v; want an error", q, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
			for _, target := range tc.is {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%v, %v) = false", err, target)
				}
			}
		})
	}
}

// endlessAfterSet acknowledges structured replies, then answers
// NBD_OPT_SET_META_CONTEXT with reply, forever.
func endlessAfterSet(reply []byte) func(f *fake) {
	return func(f *fake) {
		f.write(fixedGreeting())
		f.readClientFlags()
		f.expectOption(OptStructuredReply)
		f.write(ackTape(OptStructuredReply))
		f.expectOption(OptSetMetaContext)
		for f.err == nil {
			f.write(reply)
		}
	}
}

// TestQueryBadContextName checks the caller's context name before any I/O.
func TestQueryBadContextName(t *testing.T) {
	for name, want := range map[string]string{
		"allocation":                        `metadata context name "allocation" has no namespace`,
		"":                                  `metadata context name "" has no namespace`,
		"a:\xff":                            "not valid UTF-8",
		"a:" + strings.Repeat("x", 4095):    "longer than the protocol's limit of 4096",
		"base:allocation\x00qemu:something": "contains NUL",
	} {
		r := startFake(func(f *fake) { f.drain() })
		_, err := OpenQuery(context.Background(), r.cli, Options{}, name)
		r.wait(t) // the connection was closed
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("OpenQuery(%q): %v, want %q", name, err, want)
		}
	}
}

// TestNeverForTheKernel checks that Handshake, whose connection goes to the
// kernel, never sends the options that change the reply format, even to a
// server that offers them; and that List and OpenQuery each send only those
// they need.
func TestNeverForTheKernel(t *testing.T) {
	srv := queryServer(nil)
	_, _, _, f, err := handshake(t, srv.serve, Options{Export: "disk", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.opts, []uint32{OptGo}) {
		t.Errorf("Handshake sent %v, want NBD_OPT_GO only", optNames(f.opts))
	}

	r := startFake(queryServer(nil).serve)
	exps, err := List(context.Background(), r.cli, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f = r.wait(t)
	if slices.Contains(f.opts, OptSetMetaContext) || slices.Contains(f.opts, OptExtendedHeaders) {
		t.Errorf("List sent %v", optNames(f.opts))
	}
	if len(exps) != 1 || !exps[0].StructuredReplies || len(exps[0].MetaContexts) != 2 {
		t.Errorf("List: %+v", exps)
	}
}

// TestQueryHostile runs Map against servers that break the transmission
// phase: each must give a clear error within the deadline, and leave the
// Query broken (or, for the server's own error reports, usable).
func TestQueryHostile(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const margin = 700 * time.Millisecond
	const size = 8 << 20
	type replyFunc func(f *fake, req request) []byte
	c := func(req request) uint64 { return req.Cookie }
	full := descriptor{Length: size}
	cases := []struct {
		name    string
		reply   replyFunc
		want    string
		command bool // a *CommandError: the session stays usable
	}{{
		name: "wrong cookie",
		reply: func(f *fake, req request) []byte {
			return statusTape(chunkFlagDone, c(req)+98, 1, full)
		},
		want: "NBD_REPLY_TYPE_BLOCK_STATUS for cookie 99, but the request in flight has cookie 1",
	}, {
		name: "wrong cookie in a simple reply",
		reply: func(f *fake, req request) []byte {
			return simpleTape(22, c(req)+1)
		},
		want: "simple reply for cookie 2, but the request in flight has cookie 1",
	}, {
		name: "extent past the request",
		reply: func(f *fake, req request) []byte {
			return statusTape(chunkFlagDone, c(req), 1, descriptor{Length: size + 4096}, descriptor{Length: 4096, Flags: 3})
		},
		want: "extent 1 of 2 (0+8392704) runs past the end of the request at 8388608",
	}, {
		name: "extent after the request",
		reply: func(f *fake, req request) []byte {
			return statusTape(chunkFlagDone, c(req), 1, full, descriptor{Length: 512})
		},
		want: "extent 2 of 2 starts at 8388608, past the end of the request at 8388608",
	}, {
		name: "endless chunks",
		reply: func(f *fake, req request) []byte {
			for f.err == nil {
				f.write(errorTape(0, chunkError, c(req), errorChunk{Error: 5, Message: "again"}))
			}
			return nil
		},
		want: "more than 64 chunks in the reply to NBD_CMD_BLOCK_STATUS without NBD_REPLY_FLAG_DONE",
	}, {
		name: "block status chunk of 4 GiB",
		reply: func(f *fake, req request) []byte {
			return tape(magicStructuredReply, chunkFlagDone, chunkBlockStatus, c(req), uint32(0xfffffffc))
		},
		want: "NBD_REPLY_TYPE_BLOCK_STATUS of 4294967292 bytes, want 4 + 8 × (1 to 1048576 descriptors)",
	}, {
		name: "data chunk of 4 GiB",
		reply: func(f *fake, req request) []byte {
			return tape(magicStructuredReply, chunkFlagDone, chunkOffsetData, c(req), uint32(0xffffffff))
		},
		want: "NBD_REPLY_TYPE_OFFSET_DATA of 4294967295 bytes, want 9 to 67108872",
	}, {
		name: "error chunk of 64 KiB",
		reply: func(f *fake, req request) []byte {
			return tape(magicStructuredReply, chunkFlagDone, chunkError, c(req), uint32(1<<16))
		},
		want: "NBD_REPLY_TYPE_ERROR of 65536 bytes, want 6 to 4166",
	}, {
		name: "stall",
		reply: func(f *fake, req request) []byte {
			f.drain()
			return nil
		},
		want: "reading the reply: no complete reply within 300ms",
	}, {
		name: "stall mid-chunk",
		reply: func(f *fake, req request) []byte {
			f.write(tape(magicStructuredReply, chunkFlagDone, chunkBlockStatus, c(req), uint32(12), uint32(1)))
			f.drain()
			return nil
		},
		want: "reading block status descriptors: no complete reply within 300ms",
	}, {
		name: "hang up",
		reply: func(f *fake, req request) []byte {
			f.write(tape(magicStructuredReply, uint16(0), chunkBlockStatus, c(req)))
			f.c.Close()
			return nil
		},
		want: "reading the chunk header: server closed the connection",
	}, {
		name: "data in a block status reply",
		reply: func(f *fake, req request) []byte {
			b, _ := offsetData{Offset: 0, Data: []byte("x")}.MarshalBinary()
			return chunkTape(chunkFlagDone, chunkOffsetData, c(req), b)
		},
		want: "NBD_REPLY_TYPE_OFFSET_DATA in the reply to NBD_CMD_BLOCK_STATUS",
	}, {
		name: "wrong context",
		reply: func(f *fake, req request) []byte {
			return statusTape(chunkFlagDone, c(req), 7, full)
		},
		want: "NBD_REPLY_TYPE_BLOCK_STATUS for context ID 7, but the selected context has ID 1",
	}, {
		name: "two block status chunks",
		reply: func(f *fake, req request) []byte {
			return tape(statusTape(0, c(req), 1, descriptor{Length: 4096}), statusTape(chunkFlagDone, c(req), 1, full))
		},
		want: "a second NBD_REPLY_TYPE_BLOCK_STATUS for context ID 1 in one reply",
	}, {
		name: "done without block status",
		reply: func(f *fake, req request) []byte {
			return noneTape(c(req))
		},
		want: "the reply ended without NBD_REPLY_TYPE_BLOCK_STATUS",
	}, {
		name: "zero-length extent",
		reply: func(f *fake, req request) []byte {
			return statusTape(chunkFlagDone, c(req), 1, descriptor{Length: 4096}, descriptor{Length: 0})
		},
		want: "block status descriptor of length 0",
	}, {
		name: "bad magic",
		reply: func(f *fake, req request) []byte {
			return tape(uint32(0x12345678), uint32(0), c(req))
		},
		want: "bad reply magic 0x12345678",
	}, {
		name: "unknown chunk type",
		reply: func(f *fake, req request) []byte {
			return chunkTape(chunkFlagDone, 3, c(req), nil)
		},
		want: "unknown chunk type NBD_REPLY_TYPE(3)",
	}, {
		name: "NONE without DONE",
		reply: func(f *fake, req request) []byte {
			return chunkTape(0, chunkNone, c(req), nil)
		},
		want: "NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE",
	}, {
		name: "simple reply without an error",
		reply: func(f *fake, req request) []byte {
			return simpleTape(0, c(req))
		},
		want: "simple reply without an error to NBD_CMD_BLOCK_STATUS, whose answer must be structured",
	}, {
		name: "simple reply amid chunks",
		reply: func(f *fake, req request) []byte {
			return tape(statusTape(0, c(req), 1, full), simpleTape(5, c(req)))
		},
		want: "simple reply in the middle of a structured reply",
	}, {
		name: "error value 0",
		reply: func(f *fake, req request) []byte {
			return errorTape(chunkFlagDone, chunkError, c(req), errorChunk{})
		},
		want: "NBD_REPLY_TYPE_ERROR with error value 0",
	}, {
		name: "error offset outside the request",
		reply: func(f *fake, req request) []byte {
			return errorTape(chunkFlagDone, chunkErrorOffset, c(req), errorChunk{Error: 5, HasOffset: true, Offset: size})
		},
		want: "NBD_REPLY_TYPE_ERROR_OFFSET at offset 8388608, outside the request 0+8388608",
	}, {
		name: "simple error reply",
		reply: func(f *fake, req request) []byte {
			return simpleTape(22, c(req))
		},
		want:    "negotiate: NBD_CMD_BLOCK_STATUS 0+8388608: server failed NBD_CMD_BLOCK_STATUS: EINVAL",
		command: true,
	}, {
		name: "error chunk",
		reply: func(f *fake, req request) []byte {
			return tape(errorTape(0, chunkError, c(req), errorChunk{Error: 5, Message: "disk on fire"}), noneTape(c(req)))
		},
		want:    "server failed NBD_CMD_BLOCK_STATUS: EIO: disk on fire",
		command: true,
	}, {
		name: "error chunk after the extents",
		reply: func(f *fake, req request) []byte {
			return tape(statusTape(0, c(req), 1, full),
				errorTape(chunkFlagDone, chunkErrorOffset, c(req), errorChunk{Error: 28, HasOffset: true, Offset: 4096}))
		},
		want:    "server failed NBD_CMD_BLOCK_STATUS: ENOSPC at offset 4096",
		command: true,
	}, {
		name: "an error type from the future",
		reply: func(f *fake, req request) []byte {
			return chunkTape(chunkFlagDone, chunkErrBit|9, c(req), tape(uint32(95), uint16(2), "no", "extra fields"))
		},
		want:    "server failed NBD_CMD_BLOCK_STATUS: ENOTSUP: no",
		command: true,
	}}
	checkREADMECount(t, `and (\d+) broken replies in a query`, len(cases))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var requests []request
			srv := queryServer(func(f *fake) {
				for {
					req, ok := f.readRequest()
					if !ok {
						return
					}
					requests = append(requests, req)
					if req.Type == cmdDisc {
						f.drain()
						return
					}
					if len(requests) > 1 {
						// The session survived: answer properly.
						model{{0, size, 0}}.answer(f, req, 0)
						continue
					}
					if b := tc.reply(f, req); b != nil {
						f.write(b)
					}
					if !tc.command {
						f.drain()
						return
					}
				}
			})
			q, r, err := openQuery(t, srv, Options{Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err = q.Map(context.Background(), 0, size, func(Extent) error { return nil })
			if d := time.Since(start); d > timeout+margin {
				t.Errorf("took %v with a %v deadline", d, timeout)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "negotiate: NBD_CMD_BLOCK_STATUS 0+8388608: ") {
				t.Errorf("error %q does not name the request", err)
			}
			var ce *CommandError
			switch {
			case tc.command:
				if !errors.As(err, &ce) || errors.Is(err, ErrProtocol) {
					t.Errorf("error %v is not a *CommandError", err)
				}
				// The session is still in step.
				if err := q.Map(context.Background(), 0, size, func(Extent) error { return nil }); err != nil {
					t.Errorf("Map after the server's error: %v", err)
				}
			case tc.name == "stall" || tc.name == "stall mid-chunk":
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("errors.Is(%v, os.ErrDeadlineExceeded) = false", err)
				}
			case tc.name == "hang up":
				if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
					t.Errorf("error %v is not EOF", err)
				}
			default:
				if !errors.Is(err, ErrProtocol) {
					t.Errorf("errors.Is(%v, ErrProtocol) = false", err)
				}
			}
			if !tc.command {
				if err := q.Map(context.Background(), 0, size, func(Extent) error { return nil }); err == nil || !strings.Contains(err.Error(), "broken") {
					t.Errorf("Map on a broken session: %v", err)
				}
			}
			q.Close()
			r.wait(t)
			last := requests[len(requests)-1]
			if tc.command && last.Type != cmdDisc {
				t.Errorf("no NBD_CMD_DISC after a usable session: %+v", requests)
			}
			if !tc.command && last.Type == cmdDisc {
				t.Error("NBD_CMD_DISC sent on a session out of step")
			}
		})
	}
}

// TestQueryStreams checks that a block status chunk of the largest size
// allowed (8 MiB, 1M extents) is read in pieces: the client allocates far
// less than the chunk.
func TestQueryStreams(t *testing.T) {
	ds := make([]descriptor, maxExtentsPerChunk)
	for i := range ds {
		ds[i] = descriptor{Length: 8, Flags: uint32(i % 2)}
	}
	reply := tape(statusTape(chunkFlagDone, 1, 1, ds...))
	q, r, err := openQuery(t, queryServer(func(f *fake) {
		f.readRequest()
		f.write(reply)
		f.readRequest()
		f.drain()
	}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n := 0
	err = q.Map(context.Background(), 0, 8<<20, func(Extent) error { n++; return nil })
	runtime.ReadMemStats(&after)
	if err != nil || n != maxExtentsPerChunk {
		t.Fatalf("Map: %d extents, %v", n, err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 256<<10 {
		t.Errorf("Map allocated %d bytes for an 8 MiB chunk", d)
	}
	q.Close()
	r.wait(t)
}

func TestQueryCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	q, r, err := openQuery(t, queryServer(func(f *fake) {
		f.readRequest()
		cancel()
		f.drain()
	}), Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = q.Map(ctx, 0, 8<<20, func(Extent) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancellation took %v", d)
	}
	// Cancelled before the request: nothing is sent.
	q2, r2, err := openQuery(t, queryServer(func(f *fake) {
		if req, ok := f.readRequest(); ok && req.Type != cmdDisc {
			f.failf("request %+v after cancellation", req)
		}
		f.drain()
	}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := q2.Map(ctx, 0, 8<<20, func(Extent) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Map with a cancelled context: %v", err)
	}
	q.Close()
	q2.Close()
	r.wait(t)
	if f := r2.wait(t); f.err != nil && !errors.Is(f.err, io.EOF) {
		t.Error(f.err)
	}
}

// TestQueryRead drives the decoder's content chunks with NBD_CMD_READ.
func TestQueryRead(t *testing.T) {
	data := func(off uint64, s string) []byte {
		b, _ := offsetData{Offset: off, Data: []byte(s)}.MarshalBinary()
		return b
	}
	hole := func(off uint64, n uint32) []byte {
		b, _ := offsetHole{Offset: off, Size: n}.MarshalBinary()
		return b
	}
	const off = 4096
	for _, tc := range []struct {
		name  string
		reply func(cookie uint64) []byte
		want  string // the data, or the error
		fail  bool
	}{{
		name: "data and hole, out of order",
		reply: func(k uint64) []byte {
			return tape(chunkTape(0, chunkOffsetHole, k, hole(off+4, 4)), chunkTape(0, chunkOffsetData, k, data(off, "abcd")), noneTape(k))
		},
		want: "abcd\x00\x00\x00\x00",
	}, {
		name: "done on the content chunk",
		reply: func(k uint64) []byte {
			return chunkTape(chunkFlagDone, chunkOffsetData, k, data(off, "12345678"))
		},
		want: "12345678",
	}, {
		name: "overlap",
		reply: func(k uint64) []byte {
			return tape(chunkTape(0, chunkOffsetData, k, data(off, "abcd")), chunkTape(0, chunkOffsetHole, k, hole(off+2, 6)))
		},
		want: "NBD_REPLY_TYPE_OFFSET_HOLE 4098+6 overlaps earlier content", fail: true,
	}, {
		name: "outside the request",
		reply: func(k uint64) []byte {
			return chunkTape(chunkFlagDone, chunkOffsetData, k, data(off+4, "abcde"))
		},
		want: "NBD_REPLY_TYPE_OFFSET_DATA 4100+5 outside the request 4096+8", fail: true,
	}, {
		name: "before the request",
		reply: func(k uint64) []byte {
			return chunkTape(chunkFlagDone, chunkOffsetHole, k, hole(0, 8))
		},
		want: "NBD_REPLY_TYPE_OFFSET_HOLE 0+8 outside the request", fail: true,
	}, {
		name: "incomplete",
		reply: func(k uint64) []byte {
			return tape(chunkTape(0, chunkOffsetData, k, data(off, "abcd")), noneTape(k))
		},
		want: "the reply ended with 4 of the 8 bytes read", fail: true,
	}, {
		name: "simple reply",
		reply: func(k uint64) []byte {
			return simpleTape(0, k)
		},
		want: "simple reply to NBD_CMD_READ", fail: true,
	}, {
		name: "block status in a read reply",
		reply: func(k uint64) []byte {
			return statusTape(chunkFlagDone, k, 1, descriptor{Length: 8})
		},
		want: "NBD_REPLY_TYPE_BLOCK_STATUS in the reply to NBD_CMD_READ", fail: true,
	}, {
		name: "hole of size 0",
		reply: func(k uint64) []byte {
			return chunkTape(chunkFlagDone, chunkOffsetHole, k, tape(uint64(off), uint32(0)))
		},
		want: "NBD_REPLY_TYPE_OFFSET_HOLE of size 0", fail: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			q, r, err := openQuery(t, queryServer(func(f *fake) {
				req, _ := f.readRequest()
				if req.Type != cmdRead || req.Offset != off || req.Length != 8 {
					f.failf("request %+v", req)
				}
				f.write(tc.reply(req.Cookie))
				f.drain()
			}), Options{Timeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			b := []byte("........")
			err = q.read(context.Background(), b, off)
			if tc.fail {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrProtocol) {
					t.Errorf("error %v, want a protocol violation with %q", err, tc.want)
				}
			} else if err != nil || string(b) != tc.want {
				t.Errorf("read %q, %v; want %q", b, err, tc.want)
			}
			q.Close()
			r.wait(t)
		})
	}
}

func TestCommandError(t *testing.T) {
	for _, tc := range []struct {
		e    CommandError
		want string
	}{
		{CommandError{Command: cmdBlockStatus, Errno: 22}, "server failed NBD_CMD_BLOCK_STATUS: EINVAL"},
		{CommandError{Command: cmdRead, Errno: 5, Message: "bad\nsector", Offset: 512, HasOffset: true}, "server failed NBD_CMD_READ: EIO at offset 512: bad\uFFFDsector"},
		{CommandError{Command: 42, Errno: 1234}, "server failed NBD_CMD(42): error 1234"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.e, got, tc.want)
		}
	}
}

// read reads len(b) bytes at offset with NBD_CMD_READ over structured
// replies. Only the tests use it, to drive the decoder's content chunks.
func (q *Query) read(ctx context.Context, b []byte, offset uint64) error {
	if q.broken || q.closed || len(b) > math.MaxUint32 {
		return errors.New("negotiate: read on a broken or closed Query, or too long")
	}
	q.s.ctx = ctx
	p := &pending{cmd: cmdRead, offset: offset, length: uint32(len(b)), data: b}
	_, err := q.do(p)
	return err
}
