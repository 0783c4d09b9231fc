package negotiate

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"math"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fuzzTimeout is the handshake deadline under fuzzing. The fake server
// closes its end once it has written the input, so nearly every run ends at
// EOF long before it.
const fuzzTimeout = time.Second

// serverBytes plays data as everything the server says, ignoring what the
// client sends, then hangs up. It returns the client's end and a wait
// function.
func serverBytes(data []byte) (net.Conn, func()) {
	cli, srv := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(io.Discard, srv)
	}()
	go func() {
		defer wg.Done()
		_, _ = srv.Write(data)
		srv.Close()
	}()
	return cli, wg.Wait
}

// fuzzSeeds are server byte streams: the good conversations and the broken
// ones of the table tests.
func fuzzSeeds() [][]byte {
	goExport := infoExportTape(OptGo, 1<<20, FlagHasFlags|FlagSendFlush)
	cat := func(parts ...[]byte) []byte { return tape(anys(parts)...) }
	return [][]byte{
		greetingOld(1<<20, 1),
		greetingOld(1<<63, 1<<16),
		cat(greetingNew(0), tape(uint64(1<<20), uint16(1)), make([]byte, zeroPad)),
		cat(greetingNew(hflagNoZeroes), tape(uint64(1<<20), uint16(1))),
		cat(greetingNew(hflagFixedNewstyle), goExport, infoBlockTape(OptGo, 512, 4096, 1<<20),
			infoStringTape(OptGo, infoName, "rootfs"), infoStringTape(OptGo, infoDescription, "root"),
			replyTape(OptGo, RepInfo, tape(uint16(99), "future")), ackTape(OptGo)),
		cat(greetingNew(hflagFixedNewstyle|hflagNoZeroes), replyTape(OptGo, RepErrUnsup, nil),
			serverTape("rootfs", "root"), serverTape("other", ""), ackTape(OptList),
			tape(uint64(1<<20), uint16(1))),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptGo, RepErrUnsup, nil),
			replyTape(OptList, RepErrPolicy, []byte("no")), tape(uint64(1<<20), uint16(1)), make([]byte, zeroPad)),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptGo, RepErrUnknown, []byte("export not found")), ackTape(OptAbort)),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptGo, RepErrTLSReqd, []byte("TLS is required"))),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptStartTLS, RepErrUnsup, nil)),
		cat(greetingNew(hflagFixedNewstyle), ackTape(OptStartTLS), []byte{0x16, 0x03, 0x03, 0x00, 0x04, 1, 2, 3, 4}),
		cat(greetingNew(hflagFixedNewstyle), goExport, infoBlockTape(OptGo, 3, 4096, 1<<20), ackTape(OptGo)),
		cat(greetingNew(hflagFixedNewstyle), goExport, infoBlockTape(OptGo, 4096, 512, 1<<20), ackTape(OptGo)),
		cat(greetingNew(hflagFixedNewstyle), goExport, replyTape(OptGo, RepAck, []byte{1})),
		cat(greetingNew(hflagFixedNewstyle), tape(magicReply, OptGo, RepInfo, uint32(math.MaxUint32))),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptGo, RepErrUnsup, nil),
			replyTape(OptList, RepServer, tape(uint32(100), "short"))),
		cat(greetingNew(hflagFixedNewstyle), infoExportTape(OptGo, math.MaxUint64, 1), ackTape(OptGo)),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptList, RepAck, nil)),
		cat(greetingNew(hflagFixedNewstyle), replyTape(OptGo, RepErrBit|0x42, []byte("?"))),
		[]byte(strings.Repeat("NBDMAGIC", 3)),
	}
}

func anys(parts [][]byte) []any {
	a := make([]any, len(parts))
	for i, p := range parts {
		a[i] = p
	}
	return a
}

// checkExport checks the invariants of a successful handshake.
func checkExport(t *testing.T, ex *Export) {
	t.Helper()
	if ex.Size > math.MaxInt64 {
		t.Errorf("size %d above MaxInt64", ex.Size)
	}
	if ex.MinBlock != 0 || ex.PrefBlock != 0 || ex.MaxBlock != 0 {
		if err := checkBlockSizes(ex.MinBlock, ex.PrefBlock, ex.MaxBlock, ex.Size); err != nil {
			t.Errorf("accepted bad block sizes: %v", err)
		}
	}
	if len(ex.Name) > MaxStringSize || len(ex.Description) > MaxStringSize {
		t.Errorf("string longer than %d bytes accepted", MaxStringSize)
	}
}

// FuzzHandshake feeds arbitrary bytes as the server's side of a handshake:
// the client must return within the deadline, never panic, and only accept
// exports that pass the checks.
func FuzzHandshake(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed, "", false)
		f.Add(seed, "rootfs", false)
	}
	f.Add(tape(greetingNew(hflagFixedNewstyle), ackTape(OptStartTLS)), "", true)
	f.Fuzz(func(t *testing.T, data []byte, export string, useTLS bool) {
		cli, wait := serverBytes(data)
		opts := Options{Export: export, Timeout: fuzzTimeout}
		if useTLS {
			opts.TLS = &tls.Config{ServerName: "nbd.test"}
		}
		start := time.Now()
		ex, conn, err := Handshake(context.Background(), cli, opts)
		if d := time.Since(start); d > fuzzTimeout+time.Second {
			t.Errorf("Handshake took %v", d)
		}
		if err == nil {
			if useTLS {
				t.Error("handshake without TLS succeeded although TLS was required")
			}
			checkExport(t, ex)
			conn.Close()
		} else if ex != nil || conn != nil {
			t.Error("error with results")
		}
		cli.Close()
		wait()
	})
}

// FuzzList is FuzzHandshake for List.
func FuzzList(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Add(tape(greetingNew(hflagFixedNewstyle), replyTape(OptStructuredReply, RepErrUnsup, nil),
		serverTape("a", "first"), serverTape("b", ""), ackTape(OptList),
		infoExportTape(OptInfo, 1<<20, 1), infoBlockTape(OptInfo, 1, 4096, math.MaxUint32), ackTape(OptInfo),
		replyTape(OptInfo, RepErrUnsup, nil), ackTape(OptAbort)))
	f.Add(tape(greetingNew(hflagFixedNewstyle), ackTape(OptStructuredReply), serverTape("a", ""), serverTape("b", ""), ackTape(OptList),
		infoExportTape(OptInfo, 1<<20, FlagHasFlags|FlagSendDF), ackTape(OptInfo),
		metaContextTape(OptListMetaContext, 0, ContextBaseAllocation), metaContextTape(OptListMetaContext, 0, "qemu:dirty-bitmap:b"),
		ackTape(OptListMetaContext), replyTape(OptInfo, RepErrPolicy, nil), replyTape(OptListMetaContext, RepErrUnsup, nil),
		ackTape(OptAbort)))
	f.Fuzz(func(t *testing.T, data []byte) {
		cli, wait := serverBytes(data)
		start := time.Now()
		exports, err := List(context.Background(), cli, Options{Timeout: fuzzTimeout})
		if d := time.Since(start); d > fuzzTimeout+time.Second {
			t.Errorf("List took %v", d)
		}
		if err == nil {
			if len(exports) > maxListEntries {
				t.Errorf("%d exports", len(exports))
			}
			for i := range exports {
				checkExport(t, &exports[i])
				checkContexts(t, exports[i].MetaContexts)
			}
		}
		cli.Close()
		wait()
	})
}

// checkContexts checks metadata context names a session accepted.
func checkContexts(t *testing.T, names []string) {
	t.Helper()
	if len(names) > maxMetaContexts {
		t.Errorf("%d metadata contexts", len(names))
	}
	for _, n := range names {
		if err := checkContextName(n); err != nil || n == "" || len(n) > MaxStringSize {
			t.Errorf("metadata context %q accepted: %v", n, err)
		}
	}
}

// FuzzOpenQuery is FuzzHandshake for OpenQuery's negotiation.
func FuzzOpenQuery(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	good := tape(greetingNew(hflagFixedNewstyle|hflagNoZeroes), ackTape(OptStructuredReply),
		metaContextTape(OptSetMetaContext, 1, ContextBaseAllocation), ackTape(OptSetMetaContext),
		infoExportTape(OptGo, 1<<20, FlagHasFlags|FlagSendDF), infoBlockTape(OptGo, 1, 4096, 32<<20), ackTape(OptGo))
	f.Add(good)
	f.Add(tape(greetingNew(hflagFixedNewstyle), replyTape(OptStructuredReply, RepErrUnsup, []byte("no"))))
	f.Add(tape(greetingNew(hflagFixedNewstyle), ackTape(OptStructuredReply), ackTape(OptSetMetaContext)))
	f.Add(tape(greetingNew(hflagFixedNewstyle), ackTape(OptStructuredReply),
		metaContextTape(OptSetMetaContext, 1, "qemu:allocation-depth"), ackTape(OptSetMetaContext)))
	f.Fuzz(func(t *testing.T, data []byte) {
		cli, wait := serverBytes(data)
		start := time.Now()
		q, err := OpenQuery(context.Background(), cli, Options{Export: "disk", Timeout: fuzzTimeout}, ContextBaseAllocation)
		if d := time.Since(start); d > fuzzTimeout+time.Second {
			t.Errorf("OpenQuery took %v", d)
		}
		if err == nil {
			ex := q.Export()
			checkExport(t, &ex)
			if !ex.StructuredReplies || !slices.Equal(ex.MetaContexts, []string{ContextBaseAllocation}) {
				t.Errorf("export %+v", ex)
			}
			q.Close()
		} else if q != nil {
			t.Error("error with a Query")
		}
		cli.Close()
		wait()
	})
}

// fuzzQuery is a Query in the transmission phase on cli, as OpenQuery
// leaves it, for an export of size bytes whose context has ID 1.
func fuzzQuery(t *testing.T, cli net.Conn, size uint64) *Query {
	s, err := begin(context.Background(), cli, Options{Timeout: fuzzTimeout})
	if err != nil {
		t.Fatal(err)
	}
	s.stop()
	return &Query{s: s, export: Export{Size: size}, id: 1}
}

// structuredSeeds are server replies to the first requests of a Map (or of
// a read, for the content chunks): good ones and the hostile ones of
// TestQueryHostile.
func structuredSeeds() [][]byte {
	const size = 8 << 20
	full := descriptor{Length: size}
	cat := func(parts ...[]byte) []byte { return tape(anys(parts)...) }
	data, _ := offsetData{Offset: 0, Data: []byte("abcd")}.MarshalBinary()
	hole, _ := offsetHole{Offset: 4, Size: 4}.MarshalBinary()
	return [][]byte{
		statusTape(chunkFlagDone, 1, 1, full),
		cat(statusTape(0, 1, 1, descriptor{1 << 20, 3}, descriptor{64 << 10, 0}), noneTape(1),
			statusTape(chunkFlagDone, 2, 1, descriptor{size - (1<<20 + 64<<10), 3})),
		cat(statusTape(0, 1, 1, full), errorTape(chunkFlagDone, chunkErrorOffset, 1, errorChunk{Error: 28, HasOffset: true, Offset: 4096})),
		cat(errorTape(0, chunkError, 1, errorChunk{Error: 5, Message: "disk on fire"}), noneTape(1)),
		simpleTape(22, 1),
		simpleTape(0, 1),
		statusTape(chunkFlagDone, 99, 1, full),
		statusTape(chunkFlagDone, 1, 7, full),
		statusTape(chunkFlagDone, 1, 1, descriptor{Length: size + 1}, descriptor{Length: 1}),
		statusTape(chunkFlagDone, 1, 1, descriptor{Length: 0}),
		tape(magicStructuredReply, chunkFlagDone, chunkBlockStatus, uint64(1), uint32(0xfffffffc)),
		tape(magicStructuredReply, chunkFlagDone, chunkOffsetData, uint64(1), uint32(0xffffffff)),
		chunkTape(chunkFlagDone, chunkErrBit|9, 1, tape(uint32(95), uint16(2), "no", "extra")),
		chunkTape(0, chunkNone, 1, nil),
		cat(chunkTape(0, chunkOffsetHole, 1, hole), chunkTape(0, chunkOffsetData, 1, data), noneTape(1)),
		// Chunks without NBD_REPLY_FLAG_DONE (TestQueryHostile sends
		// them endlessly; a long seed makes minimizing crawl).
		bytes.Repeat(errorTape(0, chunkError, 1, errorChunk{Error: 5}), 3),
	}
}

// FuzzStructuredReply feeds arbitrary bytes as the server's replies in the
// transmission phase of a query session, to Map (or, with read, to a read
// of up to 8 bytes): the client must return within the deadline, never
// panic, allocate a bounded amount, and only accept extents that follow on
// from each other within the export.
func FuzzStructuredReply(f *testing.F) {
	for _, seed := range structuredSeeds() {
		f.Add(seed, false, uint32(8<<20))
		f.Add(seed, true, uint32(8))
	}
	f.Fuzz(func(t *testing.T, data []byte, read bool, size uint32) {
		size = max(size, 1)
		cli, wait := serverBytes(data)
		q := fuzzQuery(t, cli, uint64(size))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		var err error
		var pos uint64
		if read {
			b := make([]byte, min(size, 8))
			err = q.read(context.Background(), b, 0)
		} else {
			err = q.Map(context.Background(), 0, uint64(size), func(e Extent) error {
				if e.Offset != pos || e.Length == 0 || e.Offset+e.Length > uint64(size) {
					t.Fatalf("extent %+v at %d of an export of %d bytes", e, pos, size)
				}
				pos += e.Length
				return nil
			})
		}
		if d := time.Since(start); d > fuzzTimeout+time.Second {
			t.Errorf("took %v", d)
		}
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20+uint64(len(data)) {
			t.Errorf("allocated %d bytes", d)
		}
		if err == nil && !read && pos != uint64(size) {
			t.Errorf("Map succeeded with extents up to %d of %d", pos, size)
		}
		q.Close()
		wait()
	})
}
