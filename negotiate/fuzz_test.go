package negotiate

import (
	"context"
	"crypto/tls"
	"io"
	"math"
	"net"
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
	f.Add(tape(greetingNew(hflagFixedNewstyle), serverTape("a", "first"), serverTape("b", ""), ackTape(OptList),
		infoExportTape(OptInfo, 1<<20, 1), infoBlockTape(OptInfo, 1, 4096, math.MaxUint32), ackTape(OptInfo),
		replyTape(OptInfo, RepErrUnsup, nil), ackTape(OptAbort)))
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
			}
		}
		cli.Close()
		wait()
	})
}
