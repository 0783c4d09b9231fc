package negotiate

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// handshake runs Handshake against script and returns its results, the
// elapsed time, the fake server's record, and Handshake's error. A returned
// connection is closed.
func handshake(t *testing.T, script func(f *fake), opts Options) (*Export, net.Conn, time.Duration, *fake, error) {
	t.Helper()
	r := startFake(script)
	start := time.Now()
	ex, conn, err := Handshake(context.Background(), r.cli, opts)
	elapsed := time.Since(start)
	if conn != nil {
		conn.Close()
	}
	return ex, conn, elapsed, r.wait(t), err
}

var (
	rootfs = fakeExport{
		name: "rootfs", desc: "the root filesystem", size: 8 << 30,
		flags: FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagCanMultiConn,
		minB:  512, prefB: 4096, maxB: 32 << 20,
	}
	scratch = fakeExport{
		name: "scratch", size: 1 << 20, flags: FlagHasFlags | FlagSendTrim,
	}
)

func TestHandshakeGood(t *testing.T) {
	for _, tc := range []struct {
		name   string
		server goodServer
		export string
		want   Export
		// wantCflags are the client flags the server must see.
		wantCflags uint32
		// wantOpts are the options the server must see, in order.
		wantOpts []uint32
	}{{
		name:   "oldstyle",
		server: goodServer{style: "oldstyle", exports: []fakeExport{scratch}},
		want:   Export{Size: 1 << 20, Flags: FlagHasFlags | FlagSendTrim, Path: PathOldstyle},
	}, {
		name:       "newstyle",
		server:     goodServer{style: "newstyle", exports: []fakeExport{rootfs}},
		export:     "rootfs",
		want:       Export{Name: "rootfs", Size: 8 << 30, Flags: rootfs.flags, Path: PathExportName},
		wantCflags: 0,
		wantOpts:   []uint32{OptExportName},
	}, {
		name:       "newstyle with NO_ZEROES",
		server:     goodServer{style: "newstyle", noZeroes: true, exports: []fakeExport{rootfs}},
		export:     "rootfs",
		want:       Export{Name: "rootfs", Size: 8 << 30, Flags: rootfs.flags, Path: PathExportName},
		wantCflags: cflagNoZeroes,
		wantOpts:   []uint32{OptExportName},
	}, {
		name:   "fixed newstyle GO",
		server: goodServer{style: "fixed", noZeroes: true, exports: []fakeExport{scratch, rootfs}},
		export: "rootfs",
		want: Export{
			Name: "rootfs", Description: "the root filesystem", Size: 8 << 30, Flags: rootfs.flags,
			MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20, Path: PathGo,
		},
		wantCflags: cflagFixedNewstyle | cflagNoZeroes,
		wantOpts:   []uint32{OptGo},
	}, {
		name:       "fixed newstyle GO without block sizes",
		server:     goodServer{style: "fixed", exports: []fakeExport{scratch}},
		export:     "scratch",
		want:       Export{Name: "scratch", Size: 1 << 20, Flags: scratch.flags, Path: PathGo},
		wantCflags: cflagFixedNewstyle,
		wantOpts:   []uint32{OptGo},
	}, {
		name: "fixed newstyle GO default export with canonical name",
		server: goodServer{style: "fixed", defaultName: "rootfs", exports: []fakeExport{
			func() fakeExport { e := rootfs; e.canonical = "rootfs"; return e }(),
		}},
		export: "",
		want: Export{
			Name: "rootfs", Description: "the root filesystem", Size: 8 << 30, Flags: rootfs.flags,
			MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20, Path: PathGo,
		},
		wantCflags: cflagFixedNewstyle,
		wantOpts:   []uint32{OptGo},
	}, {
		name:       "GO unsupported: LIST then EXPORT_NAME",
		server:     goodServer{style: "fixed", noGo: true, exports: []fakeExport{scratch, rootfs}},
		export:     "rootfs",
		want:       Export{Name: "rootfs", Size: 8 << 30, Flags: rootfs.flags, Path: PathExportName},
		wantCflags: cflagFixedNewstyle,
		wantOpts:   []uint32{OptGo, OptList, OptExportName},
	}, {
		name:       "GO unsupported, NO_ZEROES",
		server:     goodServer{style: "fixed", noGo: true, noZeroes: true, exports: []fakeExport{rootfs}},
		export:     "rootfs",
		want:       Export{Name: "rootfs", Size: 8 << 30, Flags: rootfs.flags, Path: PathExportName},
		wantCflags: cflagFixedNewstyle | cflagNoZeroes,
		wantOpts:   []uint32{OptGo, OptList, OptExportName},
	}, {
		name:       "GO and LIST unsupported",
		server:     goodServer{style: "fixed", noGo: true, noList: true, exports: []fakeExport{rootfs}},
		export:     "rootfs",
		want:       Export{Name: "rootfs", Size: 8 << 30, Flags: rootfs.flags, Path: PathExportName},
		wantCflags: cflagFixedNewstyle,
		wantOpts:   []uint32{OptGo, OptList, OptExportName},
	}, {
		name:       "GO unsupported, default export is not looked up",
		server:     goodServer{style: "fixed", noGo: true, defaultName: "scratch", exports: []fakeExport{scratch}},
		export:     "",
		want:       Export{Name: "", Size: 1 << 20, Flags: scratch.flags, Path: PathExportName},
		wantCflags: cflagFixedNewstyle,
		wantOpts:   []uint32{OptGo, OptExportName},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.server
			ex, conn, _, f, err := handshake(t, srv.serve, Options{Export: tc.export, Timeout: 2 * time.Second})
			if err != nil {
				t.Fatalf("Handshake: %v", err)
			}
			if f.err != nil && !errors.Is(f.err, io.EOF) && !errors.Is(f.err, io.ErrClosedPipe) {
				t.Errorf("fake server: %v", f.err)
			}
			if !reflect.DeepEqual(*ex, tc.want) {
				t.Errorf("export\n got %+v\nwant %+v", *ex, tc.want)
			}
			if conn == nil {
				t.Error("nil connection")
			}
			if tc.server.style != "oldstyle" && f.cflags != tc.wantCflags {
				t.Errorf("client flags %#x, want %#x", f.cflags, tc.wantCflags)
			}
			if !slices.Equal(f.opts, tc.wantOpts) {
				t.Errorf("options %v, want %v", optNames(f.opts), optNames(tc.wantOpts))
			}
			for _, reqs := range srv.infoReqs {
				if !slices.Contains(reqs, infoBlockSize) {
					t.Errorf("NBD_OPT_GO requested %v, without NBD_INFO_BLOCK_SIZE", reqs)
				}
			}
		})
	}
}

func optNames(opts []uint32) []string {
	var s []string
	for _, o := range opts {
		s = append(s, OptionName(o))
	}
	return s
}

// TestConnectionUsable checks that the returned connection has no deadline
// left and carries the transmission phase: NBD_CMD_DISC arrives intact.
func TestConnectionUsable(t *testing.T) {
	got := make(chan []byte, 1)
	srv := goodServer{style: "fixed", exports: []fakeExport{rootfs}, transmission: func(f *fake) {
		got <- f.read(28)
	}}
	r := startFake(srv.serve)
	ex, conn, err := Handshake(context.Background(), r.cli, Options{Export: "rootfs", Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Path != PathGo {
		t.Errorf("path %q", ex.Path)
	}
	time.Sleep(200 * time.Millisecond) // past the handshake deadline
	if err := Disconnect(conn); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	want := tape(magicRequest, uint16(0), cmdDisc, uint64(0), uint64(0), uint32(0))
	if b := <-got; string(b) != string(want) {
		t.Errorf("NBD_CMD_DISC % x, want % x", b, want)
	}
	r.wait(t)
}

func TestList(t *testing.T) {
	for _, tc := range []struct {
		name     string
		server   goodServer
		want     []Export
		wantOpts []uint32
	}{{
		name:   "with INFO",
		server: goodServer{style: "fixed", exports: []fakeExport{scratch, rootfs}},
		want: []Export{
			{Name: "scratch", Size: 1 << 20, Flags: scratch.flags},
			{Name: "rootfs", Description: "the root filesystem", Size: 8 << 30, Flags: rootfs.flags,
				MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20},
		},
		wantOpts: []uint32{OptStructuredReply, OptList, OptInfo, OptInfo, OptAbort},
	}, {
		name: "with structured replies and meta contexts",
		server: goodServer{style: "fixed", structured: true, exports: []fakeExport{
			withContexts(scratch, ContextBaseAllocation, "qemu:dirty-bitmap:b0"), rootfs,
		}},
		want: []Export{
			{Name: "scratch", Size: 1 << 20, Flags: scratch.flags, StructuredReplies: true,
				MetaContexts: []string{ContextBaseAllocation, "qemu:dirty-bitmap:b0"}},
			{Name: "rootfs", Description: "the root filesystem", Size: 8 << 30, Flags: rootfs.flags,
				MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20, StructuredReplies: true, MetaContexts: []string{}},
		},
		wantOpts: []uint32{OptStructuredReply, OptList, OptInfo, OptListMetaContext, OptInfo, OptListMetaContext, OptAbort},
	}, {
		name: "structured replies without NBD_OPT_LIST_META_CONTEXT",
		server: goodServer{style: "fixed", structured: true, noMetaList: true, exports: []fakeExport{
			withContexts(scratch, ContextBaseAllocation), rootfs,
		}},
		want: []Export{
			{Name: "scratch", Size: 1 << 20, Flags: scratch.flags, StructuredReplies: true},
			{Name: "rootfs", Description: "the root filesystem", Size: 8 << 30, Flags: rootfs.flags,
				MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20, StructuredReplies: true},
		},
		// Asked once: NBD_REP_ERR_UNSUP is the server's answer for all.
		wantOpts: []uint32{OptStructuredReply, OptList, OptInfo, OptListMetaContext, OptInfo, OptAbort},
	}, {
		name:   "without INFO",
		server: goodServer{style: "fixed", noGo: true, exports: []fakeExport{scratch, rootfs}},
		want: []Export{
			{Name: "scratch"},
			{Name: "rootfs", Description: "the root filesystem"},
		},
		wantOpts: []uint32{OptStructuredReply, OptList, OptInfo, OptAbort},
	}, {
		name:     "empty",
		server:   goodServer{style: "fixed"},
		wantOpts: []uint32{OptStructuredReply, OptList, OptAbort},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.server
			r := startFake(srv.serve)
			got, err := List(context.Background(), r.cli, Options{Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			f := r.wait(t)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("List\n got %+v\nwant %+v", got, tc.want)
			}
			if !slices.Equal(f.opts, tc.wantOpts) {
				t.Errorf("options %v, want %v", optNames(f.opts), optNames(tc.wantOpts))
			}
		})
	}
}

// withContexts returns e offering the metadata contexts.
func withContexts(e fakeExport, contexts ...string) fakeExport {
	e.contexts = contexts
	return e
}

func TestListNotFixed(t *testing.T) {
	for _, style := range []string{"oldstyle", "newstyle"} {
		srv := goodServer{style: style, exports: []fakeExport{scratch}}
		r := startFake(srv.serve)
		_, err := List(context.Background(), r.cli, Options{Timeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "cannot list exports") {
			t.Errorf("%s: error %v, want one saying it cannot list exports", style, err)
		}
		r.wait(t)
	}
}

// TestAbortAfterRefusal checks the courtesy NBD_OPT_ABORT after an error
// reply, and its absence after a protocol violation.
func TestAbortAfterRefusal(t *testing.T) {
	var next uint32
	_, _, _, f, err := handshake(t, func(f *fake) {
		f.write(greetingNew(hflagFixedNewstyle))
		f.readClientFlags()
		f.expectOption(OptGo)
		f.write(replyTape(OptGo, RepErrShutdown, []byte("going down")))
		next, _, _ = f.readOption()
		f.drain()
	}, Options{Export: "rootfs", Timeout: time.Second})
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Code != RepErrShutdown || oe.Message != "going down" {
		t.Fatalf("error %v, want NBD_REP_ERR_SHUTDOWN", err)
	}
	if next != OptAbort {
		t.Errorf("after the refusal the client sent %s, want NBD_OPT_ABORT", OptionName(next))
	}
	if f.err != nil && !errors.Is(f.err, io.EOF) {
		t.Errorf("fake: %v", f.err)
	}

	_, _, _, f, err = handshake(t, func(f *fake) {
		f.write(greetingNew(hflagFixedNewstyle))
		f.readClientFlags()
		f.expectOption(OptGo)
		f.write(tape(uint64(0xdead), OptGo, RepAck, uint32(0)))
		f.drain()
	}, Options{Export: "rootfs", Timeout: time.Second})
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("error %v, want a protocol violation", err)
	}
	if !slices.Equal(f.opts, []uint32{OptGo}) {
		t.Errorf("options %v after a protocol violation, want NBD_OPT_GO only", optNames(f.opts))
	}
}

// A reply stream that never ends: the same reply, forever.
func endless(greet []byte, opt uint32, reply []byte) func(f *fake) {
	return func(f *fake) {
		f.write(greet)
		f.readClientFlags()
		f.readOption()
		for f.err == nil {
			f.write(reply)
		}
	}
}

// After NBD_OPT_GO is refused as unsupported, the fallback sends LIST.
func goUnsupThen(rest ...[]byte) func(f *fake) {
	return func(f *fake) {
		f.write(greetingNew(hflagFixedNewstyle))
		f.readClientFlags()
		f.expectOption(OptGo)
		f.write(replyTape(OptGo, RepErrUnsup, nil))
		f.expectOption(OptList)
		for _, b := range rest {
			f.write(b)
		}
		f.finish()
	}
}

// goThen answers NBD_OPT_GO with the given tapes.
func goThen(rest ...[]byte) func(f *fake) {
	return func(f *fake) {
		f.write(greetingNew(hflagFixedNewstyle))
		f.readClientFlags()
		f.expectOption(OptGo)
		for _, b := range rest {
			f.write(b)
		}
		f.finish()
	}
}

func fixedGreeting() []byte { return greetingNew(hflagFixedNewstyle) }

func TestHandshakeBroken(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const margin = 700 * time.Millisecond
	goodExport := infoExportTape(OptGo, 1<<20, FlagHasFlags)

	cases := []struct {
		name   string
		script func(f *fake)
		opts   Options
		want   string // substring of the error
		is     error  // errors.Is target, if any
		code   uint32 // OptionError code, if any
		// abort: the client must end with NBD_OPT_ABORT; implied by code.
		abort bool
	}{{
		name:   "bad INIT magic",
		script: func(f *fake) { f.send(uint64(0x1122334455667788), magicOpt, uint16(1)); f.drain() },
		want:   "negotiate: greeting: protocol violation: bad greeting magic 0x1122334455667788",
		is:     ErrProtocol,
	}, {
		name:   "bad option magic in greeting",
		script: func(f *fake) { f.send(magicInit, uint64(0x4948415645000000), uint16(1)); f.drain() },
		want:   "after NBDMAGIC",
		is:     ErrProtocol,
	}, {
		name:   "truncated greeting",
		script: func(f *fake) { f.send(magicInit, uint32(0x49484156)) },
		want:   "negotiate: greeting: reading the greeting: server closed the connection",
		is:     io.ErrUnexpectedEOF,
	}, {
		name:   "truncated oldstyle greeting",
		script: func(f *fake) { f.send(magicInit, magicOldstyle, uint64(1<<20)) },
		want:   "reading the oldstyle greeting: server closed the connection",
	}, {
		name: "wrong option echo",
		script: goThen(
			replyTape(OptList, RepInfo, tape(infoExport, uint64(1), uint16(1))),
		),
		want: "protocol violation: reply is for NBD_OPT_LIST, but the client sent NBD_OPT_GO",
		is:   ErrProtocol,
	}, {
		name:   "bad reply magic",
		script: goThen(tape(uint64(0x0003e889045565a8), OptGo, RepAck, uint32(0))),
		want:   "bad option reply magic 0x0003e889045565a8",
		is:     ErrProtocol,
	}, {
		name:   "INFO_EXPORT of 13 bytes",
		script: goThen(replyTape(OptGo, RepInfo, tape(infoExport, uint64(1), uint16(1), uint8(0)))),
		want:   "NBD_INFO_EXPORT of 13 bytes, want 12",
		is:     ErrProtocol,
	}, {
		name:   "INFO_EXPORT of 11 bytes",
		script: goThen(replyTape(OptGo, RepInfo, tape(infoExport, uint64(1), uint8(1)))),
		want:   "NBD_INFO_EXPORT of 11 bytes, want 12",
		is:     ErrProtocol,
	}, {
		name: "BLOCK_SIZE of 18 bytes",
		script: goThen(goodExport,
			replyTape(OptGo, RepInfo, tape(infoBlockSize, uint32(512), uint32(4096), uint32(1<<20), uint32(0)))),
		want: "NBD_INFO_BLOCK_SIZE of 18 bytes, want 14",
		is:   ErrProtocol,
	}, {
		name:   "minimum block size not a power of two",
		script: goThen(goodExport, infoBlockTape(OptGo, 3, 4096, 1<<20), ackTape(OptGo)),
		want:   "minimum block size 3 is not a power of two",
		is:     ErrProtocol,
	}, {
		name:   "minimum block size above 64 KiB",
		script: goThen(goodExport, infoBlockTape(OptGo, 128<<10, 128<<10, 1<<20), ackTape(OptGo)),
		want:   "minimum block size 131072",
		is:     ErrProtocol,
	}, {
		name:   "preferred smaller than minimum",
		script: goThen(goodExport, infoBlockTape(OptGo, 4096, 2048, 1<<20), ackTape(OptGo)),
		want:   "preferred block size 2048 is not a power of two at least max(minimum block size 4096, 512)",
		is:     ErrProtocol,
	}, {
		name:   "preferred below 512",
		script: goThen(goodExport, infoBlockTape(OptGo, 1, 256, 1<<20), ackTape(OptGo)),
		want:   "preferred block size 256",
		is:     ErrProtocol,
	}, {
		name:   "preferred not a power of two",
		script: goThen(goodExport, infoBlockTape(OptGo, 512, 3000, 1<<20), ackTape(OptGo)),
		want:   "preferred block size 3000",
		is:     ErrProtocol,
	}, {
		name:   "maximum smaller than preferred",
		script: goThen(goodExport, infoBlockTape(OptGo, 512, 4096, 2048), ackTape(OptGo)),
		want:   "maximum block size 2048 is smaller than the preferred block size 4096",
		is:     ErrProtocol,
	}, {
		name:   "maximum not a multiple of minimum",
		script: goThen(goodExport, infoBlockTape(OptGo, 4096, 4096, 1<<20+512), ackTape(OptGo)),
		want:   "maximum block size 1049088 is not a multiple of the minimum block size 4096",
		is:     ErrProtocol,
	}, {
		name:   "ACK with payload",
		script: goThen(goodExport, replyTape(OptGo, RepAck, []byte{0, 0, 0, 0})),
		want:   "NBD_REP_ACK carries a 4-byte payload",
		is:     ErrProtocol,
	}, {
		name: "STARTTLS ACK with payload",
		script: func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.readOption()
			f.write(replyTape(OptStartTLS, RepAck, []byte("x")))
			f.drain()
		},
		opts: Options{TLS: &tls.Config{ServerName: "nbd.test"}},
		want: "negotiate: NBD_OPT_STARTTLS: protocol violation: NBD_REP_ACK carries a 1-byte payload",
		is:   ErrProtocol,
	}, {
		name:   "4 GiB reply length",
		script: goThen(tape(magicReply, OptGo, RepInfo, uint32(math.MaxUint32))),
		want:   "NBD_REP_INFO reply claims a 4294967295-byte payload, more than the 65536 allowed",
		is:     ErrProtocol,
	}, {
		name:   "4 GiB error message",
		script: goThen(tape(magicReply, OptGo, RepErrPolicy, uint32(math.MaxUint32))),
		want:   "claims a 4294967295-byte payload",
		is:     ErrProtocol,
	}, {
		name:   "error message over 4096 bytes",
		script: goThen(replyTape(OptGo, RepErrPolicy, make([]byte, 5000))),
		want:   "NBD_REP_ERR_POLICY message of 5000 bytes, longer than the protocol's limit of 4096",
		is:     ErrProtocol,
	}, {
		name:   "NBD_INFO_NAME over 4096 bytes",
		script: goThen(goodExport, infoStringTape(OptGo, infoName, strings.Repeat("n", 5000))),
		want:   "NBD_INFO_NAME of 5000 bytes, longer than the protocol's limit of 4096",
		is:     ErrProtocol,
	}, {
		name:   "NBD_REP_SERVER name length beyond payload",
		script: goUnsupThen(replyTape(OptList, RepServer, tape(uint32(100), "short"))),
		opts:   Options{Export: "rootfs"},
		want:   "negotiate: NBD_OPT_LIST: protocol violation: NBD_REP_SERVER name length 100 exceeds the 5-byte payload",
		is:     ErrProtocol,
	}, {
		name:   "NBD_REP_SERVER too short",
		script: goUnsupThen(replyTape(OptList, RepServer, []byte{0, 0})),
		opts:   Options{Export: "rootfs"},
		want:   "NBD_REP_SERVER of 2 bytes, too short",
		is:     ErrProtocol,
	}, {
		name:   "NBD_REP_SERVER name over 4096 bytes",
		script: goUnsupThen(serverTape(strings.Repeat("x", 5000), "")),
		opts:   Options{Export: "rootfs"},
		want:   "NBD_REP_SERVER string longer than 4096 bytes",
		is:     ErrProtocol,
	}, {
		name:   "silence after accept",
		script: func(f *fake) { f.drain() },
		want:   "negotiate: greeting: reading the greeting: handshake not done within 300ms",
		is:     os.ErrDeadlineExceeded,
	}, {
		name:   "silence after the client flags",
		script: func(f *fake) { f.write(fixedGreeting()); f.drain() },
		want:   "negotiate: NBD_OPT_GO \"\": reading the reply header: handshake not done within 300ms",
		is:     os.ErrDeadlineExceeded,
	}, {
		name: "one byte at a time",
		script: func(f *fake) {
			for _, b := range greetingNew(hflagFixedNewstyle) {
				f.write([]byte{b})
				time.Sleep(50 * time.Millisecond)
			}
			f.drain()
		},
		want: "handshake not done within 300ms",
		is:   os.ErrDeadlineExceeded,
	}, {
		name:   "endless NBD_REP_SERVER",
		script: goUnsupThen(slices.Repeat([][]byte{serverTape("x", "")}, 2000)...),
		opts:   Options{Export: "rootfs"},
		want:   "more than 1024 NBD_REP_SERVER replies",
		is:     ErrProtocol,
	}, {
		name:   "endless big NBD_REP_SERVER",
		script: goUnsupThen(slices.Repeat([][]byte{serverTape("x", strings.Repeat("d", 4000))}, 300)...),
		opts:   Options{Export: "rootfs"},
		want:   "NBD_OPT_LIST replies exceed 1048576 bytes",
		is:     ErrProtocol,
	}, {
		name:   "endless NBD_REP_INFO",
		script: endless(fixedGreeting(), OptGo, goodExport),
		want:   "more than 64 replies",
		is:     ErrProtocol,
	}, {
		name:   "endless unknown NBD_REP_INFO of 64 KiB",
		script: endless(fixedGreeting(), OptGo, replyTape(OptGo, RepInfo, tape(uint16(77), make([]byte, 65534)))),
		want:   "more than 64 replies",
		is:     ErrProtocol,
	}, {
		name:   "unknown error code",
		script: goThen(replyTape(OptGo, RepErrBit|0x42, []byte("new in 2030"))),
		opts:   Options{Export: "rootfs"},
		want:   `negotiate: NBD_OPT_GO "rootfs": server refused: NBD_REP_ERR(0x80000042): new in 2030`,
		code:   RepErrBit | 0x42,
	}, {
		name:   "unknown non-error reply type",
		script: goThen(replyTape(OptGo, 77, nil)),
		want:   "unexpected NBD_REP(77) reply",
		is:     ErrProtocol,
	}, {
		name:   "NBD_REP_SERVER in reply to GO",
		script: goThen(replyTape(OptGo, RepServer, tape(uint32(1), "x"))),
		want:   "unexpected NBD_REP_SERVER reply",
		is:     ErrProtocol,
	}, {
		name:   "missing export",
		script: goThen(replyTape(OptGo, RepErrUnknown, []byte("export not found"))),
		opts:   Options{Export: "rootfs"},
		want:   `negotiate: NBD_OPT_GO "rootfs": server refused: NBD_REP_ERR_UNKNOWN: export not found`,
		is:     ErrExportNotFound,
		code:   RepErrUnknown,
	}, {
		name:   "missing export, no message",
		script: goThen(replyTape(OptGo, RepErrUnknown, nil)),
		opts:   Options{Export: "rootfs"},
		want:   `server refused: NBD_REP_ERR_UNKNOWN (export not available)`,
		is:     ErrExportNotFound,
		code:   RepErrUnknown,
	}, {
		name:   "control characters in the message",
		script: goThen(replyTape(OptGo, RepErrPolicy, []byte("no\x1b[2J\xff"))),
		want:   "NBD_REP_ERR_POLICY: no\ufffd[2J\ufffd",
		code:   RepErrPolicy,
	}, {
		name:   "missing export, GO unsupported",
		script: goUnsupThen(serverTape("a", ""), serverTape("b", "second"), ackTape(OptList)),
		opts:   Options{Export: "x"},
		want:   `negotiate: export "x" not found on server; it offers: a, b`,
		is:     ErrExportNotFound,
		abort:  true,
	}, {
		name: "bad name, GO and LIST unsupported, server hangs up",
		script: func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.expectOption(OptGo)
			f.write(replyTape(OptGo, RepErrUnsup, nil))
			f.expectOption(OptList)
			f.write(replyTape(OptList, RepErrUnsup, nil))
			f.expectOption(OptExportName)
		},
		opts: Options{Export: "x"},
		want: `negotiate: NBD_OPT_EXPORT_NAME "x": server closed the connection instead of accepting the export`,
		is:   io.EOF,
	}, {
		name: "bad name, non-fixed newstyle, server hangs up",
		script: func(f *fake) {
			f.write(greetingNew(0))
			f.readClientFlags()
			f.expectOption(OptExportName)
		},
		opts: Options{Export: "x"},
		want: `negotiate: NBD_OPT_EXPORT_NAME "x": server closed the connection instead of accepting the export`,
	}, {
		name:   "TLS required by the server",
		script: goThen(replyTape(OptGo, RepErrTLSReqd, []byte("TLS is required"))),
		opts:   Options{Export: "rootfs"},
		want:   `negotiate: NBD_OPT_GO "rootfs": server requires TLS: NBD_REP_ERR_TLS_REQD: TLS is required`,
		is:     ErrTLSRequired,
		code:   RepErrTLSReqd,
	}, {
		name:   "TLS required by the server, on LIST",
		script: goUnsupThen(replyTape(OptList, RepErrTLSReqd, nil)),
		opts:   Options{Export: "rootfs"},
		want:   "negotiate: NBD_OPT_LIST: server requires TLS",
		is:     ErrTLSRequired,
		code:   RepErrTLSReqd,
	}, {
		name: "server refuses STARTTLS",
		script: func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.expectOption(OptStartTLS)
			f.write(replyTape(OptStartTLS, RepErrUnsup, nil))
			f.finish()
		},
		opts: Options{TLS: &tls.Config{ServerName: "nbd.test"}},
		want: "negotiate: NBD_OPT_STARTTLS: server does not support TLS; refusing to continue without TLS (server refused: NBD_REP_ERR_UNSUP",
		is:   ErrTLSUnsupported,
		code: RepErrUnsup,
	}, {
		name: "server refuses STARTTLS by policy",
		script: func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.expectOption(OptStartTLS)
			f.write(replyTape(OptStartTLS, RepErrPolicy, []byte("no TLS here")))
			f.finish()
		},
		opts: Options{TLS: &tls.Config{ServerName: "nbd.test"}},
		want: "server does not support TLS",
		is:   ErrTLSUnsupported,
		code: RepErrPolicy,
	}, {
		name:   "oldstyle with TLS required",
		script: func(f *fake) { f.write(greetingOld(1<<20, 1)); f.drain() },
		opts:   Options{TLS: &tls.Config{ServerName: "nbd.test"}},
		want:   "negotiate: greeting: server does not support TLS: the server uses oldstyle negotiation",
		is:     ErrTLSUnsupported,
	}, {
		name:   "non-fixed newstyle with TLS required",
		script: func(f *fake) { f.write(greetingNew(hflagNoZeroes)); f.drain() },
		opts:   Options{TLS: &tls.Config{ServerName: "nbd.test"}},
		want:   "server does not support TLS: the server uses non-fixed newstyle negotiation",
		is:     ErrTLSUnsupported,
	}, {
		name:   "oldstyle with an export name",
		script: func(f *fake) { f.write(greetingOld(1<<20, 1)); f.drain() },
		opts:   Options{Export: "rootfs"},
		want:   `cannot select export "rootfs"`,
	}, {
		name:   "oldstyle flags above 16 bits",
		script: func(f *fake) { f.write(greetingOld(1<<20, 1<<16|1)); f.drain() },
		want:   "oldstyle export flags 0x00010001",
		is:     ErrProtocol,
	}, {
		name:   "oldstyle size with the top bit set",
		script: func(f *fake) { f.write(greetingOld(1<<63, 1)); f.drain() },
		want:   "export size 9223372036854775808 is larger than 2^63-1",
		is:     ErrProtocol,
	}, {
		name:   "INFO_EXPORT size with the top bit set",
		script: goThen(infoExportTape(OptGo, math.MaxUint64, FlagHasFlags), ackTape(OptGo)),
		want:   "export size 18446744073709551615 is larger than 2^63-1",
		is:     ErrProtocol,
	}, {
		name: "EXPORT_NAME size with the top bit set",
		script: func(f *fake) {
			f.write(greetingNew(0))
			f.readClientFlags()
			f.expectOption(OptExportName)
			f.send(uint64(1<<63), uint16(1), make([]byte, zeroPad))
			f.drain()
		},
		want: "export size 9223372036854775808 is larger than 2^63-1",
		is:   ErrProtocol,
	}, {
		name: "server closes mid-reply",
		script: func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.expectOption(OptGo)
			f.write(goodExport[:25])
		},
		want: `negotiate: NBD_OPT_GO "": reading NBD_INFO_EXPORT: server closed the connection`,
		is:   io.ErrUnexpectedEOF,
	}, {
		name: "server closes after the option",
		script: func(f *fake) {
			f.write(fixedGreeting())
			f.readClientFlags()
			f.expectOption(OptGo)
		},
		want: `reading the reply header: server closed the connection: EOF`,
		is:   io.EOF,
	}, {
		name:   "ACK before INFO_EXPORT",
		script: goThen(infoBlockTape(OptGo, 512, 4096, 1<<20), ackTape(OptGo)),
		want:   "NBD_REP_ACK without the mandatory NBD_INFO_EXPORT",
		is:     ErrProtocol,
	}, {
		name:   "NBD_REP_INFO too short",
		script: goThen(replyTape(OptGo, RepInfo, []byte{0})),
		want:   "NBD_REP_INFO of 1 bytes, too short",
		is:     ErrProtocol,
	}, {
		name:   "export name too long",
		script: func(f *fake) { f.drain() },
		opts:   Options{Export: strings.Repeat("e", 4097)},
		want:   "export name is 4097 bytes, longer than the protocol's limit of 4096",
	}}
	checkREADMECount(t, `scripted fake server with (\d+) broken behaviours`, len(cases))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Timeout = timeout
			ex, conn, elapsed, f, err := handshake(t, tc.script, opts)
			if err == nil {
				t.Fatalf("no error; export %+v", *ex)
			}
			if ex != nil || conn != nil {
				t.Errorf("error %v came with export %v and connection %v", err, ex, conn)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n %q\ndoes not contain\n %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "negotiate: ") {
				t.Errorf("error %q does not start with \"negotiate: \"", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.is)
			}
			var oe *OptionError
			if tc.code != 0 && (!errors.As(err, &oe) || oe.Code != tc.code) {
				t.Errorf("error %v is not an OptionError with code %s", err, ReplyName(tc.code))
			}
			if tc.code == 0 && errors.As(err, &oe) {
				t.Errorf("error %v is an unexpected OptionError", err)
			}
			if elapsed > timeout+margin {
				t.Errorf("took %v, deadline %v", elapsed, timeout)
			}
			if want := tc.abort || tc.code != 0; slices.Contains(f.opts, OptAbort) != want {
				t.Errorf("options %v; want NBD_OPT_ABORT: %v", optNames(f.opts), want)
			}
		})
	}
}

// TestHugeLengthNoAllocation checks that a reply claiming 4 GiB is refused
// without allocating it.
func TestHugeLengthNoAllocation(t *testing.T) {
	for _, script := range []func(f *fake){
		goThen(tape(magicReply, OptGo, RepInfo, uint32(math.MaxUint32))),
		goThen(tape(magicReply, OptGo, RepErrUnknown, uint32(math.MaxUint32))),
		goUnsupThen(tape(magicReply, OptList, RepServer, uint32(math.MaxUint32), uint32(math.MaxUint32))),
		goUnsupThen(replyTape(OptList, RepServer, tape(uint32(math.MaxUint32), "x"))),
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, _, _, _, err := handshake(t, script, Options{Export: "x", Timeout: time.Second})
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("error %v, want a protocol violation", err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Errorf("handshake allocated %d bytes", d)
		}
	}
}

func TestContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := startFake(func(f *fake) {
		f.write(fixedGreeting())
		f.readClientFlags()
		f.expectOption(OptGo)
		cancel() // mid-handshake, while the client waits for the reply
		f.drain()
	})
	start := time.Now()
	_, _, err := Handshake(ctx, r.cli, Options{Timeout: 10 * time.Second})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if !strings.HasPrefix(err.Error(), `negotiate: NBD_OPT_GO "": `) {
		t.Errorf("error %q does not name the step", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancellation took %v", d)
	}
	f := r.wait(t)
	if slices.Contains(f.opts, OptAbort) {
		t.Error("NBD_OPT_ABORT sent after cancellation")
	}
}

func TestContextDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r := startFake(func(f *fake) { f.drain() })
	start := time.Now()
	_, _, err := Handshake(ctx, r.cli, Options{Timeout: 10 * time.Second})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v with a 100ms context deadline", d)
	}
	r.wait(t)

	// An already-cancelled context fails at once, and closes the conn.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	cli, srv := net.Pipe()
	defer srv.Close()
	if _, _, err := Handshake(ctx, cli, Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if _, err := cli.Write([]byte{0}); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("connection still open after a failed Handshake: write error %v", err)
	}
}

func TestNegativeTimeout(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	_, _, err := Handshake(context.Background(), cli, Options{Timeout: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "negative timeout") {
		t.Fatalf("error %v, want negative timeout", err)
	}
}

func TestFlagsString(t *testing.T) {
	for _, tc := range []struct {
		f    Flags
		want string
	}{
		{0, "0"},
		{FlagHasFlags | FlagReadOnly | FlagSendFlush, "HAS_FLAGS,READ_ONLY,SEND_FLUSH"},
		{FlagSendFUA | FlagRotational | FlagSendTrim | FlagSendWriteZeroes | FlagSendDF, "SEND_FUA,ROTATIONAL,SEND_TRIM,SEND_WRITE_ZEROES,SEND_DF"},
		{FlagCanMultiConn | FlagSendResize | FlagSendCache | FlagSendFastZero | FlagBlockStatusPayload, "CAN_MULTI_CONN,SEND_RESIZE,SEND_CACHE,SEND_FAST_ZERO,BLOCK_STAT_PAYLOAD"},
		{FlagHasFlags | 1<<15, "HAS_FLAGS,0x8000"},
		{1 << 13, "0x2000"},
	} {
		if got := tc.f.String(); got != tc.want {
			t.Errorf("Flags(%#x).String() = %q, want %q", uint16(tc.f), got, tc.want)
		}
	}
	f := FlagHasFlags | FlagReadOnly
	if !f.Has(FlagReadOnly) || !f.Has(FlagHasFlags|FlagReadOnly) || f.Has(FlagReadOnly|FlagSendFlush) {
		t.Error("Has is wrong")
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{OptionName(OptGo), "NBD_OPT_GO"},
		{OptionName(OptExtendedHeaders), "NBD_OPT_EXTENDED_HEADERS"},
		{OptionName(99), "NBD_OPT(99)"},
		{ReplyName(RepErrExtHeaderReqd), "NBD_REP_ERR_EXT_HEADER_REQD"},
		{ReplyName(RepErrTooBig), "NBD_REP_ERR_TOO_BIG"},
		{ReplyName(RepErrBit | 99), "NBD_REP_ERR(0x80000063)"},
		{ReplyName(99), "NBD_REP(99)"},
		{(&OptionError{Option: OptGo, Code: RepErrBlockSizeReqd}).Error(), "server refused: NBD_REP_ERR_BLOCK_SIZE_REQD (the client must request block size constraints)"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestCheckBlockSizes(t *testing.T) {
	for _, tc := range []struct {
		minB, pref, maxB uint32
		size             uint64
		ok               bool
	}{
		{1, 512, 256, 1 << 20, false}, // max < preferred
		{1, 512, math.MaxUint32, 1 << 30, true},
		{512, 4096, 32 << 20, 1 << 30, true},
		{65536, 65536, 65536, 1 << 30, true},
		{4096, 4096, 4096, 100, true},
		{512, 4096, 1024, 1000, true},     // max ≥ min(preferred, size)
		{512, 4096, 1024, 1 << 20, false}, // max < preferred
		{0, 4096, 1 << 20, 1 << 20, false},
		{512, 0, 1 << 20, 1 << 20, false},
		{512, 4096, 0, 1 << 20, false},
	} {
		err := checkBlockSizes(tc.minB, tc.pref, tc.maxB, tc.size)
		if (err == nil) != tc.ok {
			t.Errorf("checkBlockSizes(%d, %d, %d, %d) = %v, want ok=%v", tc.minB, tc.pref, tc.maxB, tc.size, err, tc.ok)
		}
	}
}

func BenchmarkHandshakeFake(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		srv := goodServer{style: "fixed", noZeroes: true, exports: []fakeExport{rootfs}}
		r := startFake(srv.serve)
		ex, conn, err := Handshake(context.Background(), r.cli, Options{Export: "rootfs"})
		if err != nil {
			b.Fatal(err)
		}
		if ex.Size != rootfs.size {
			b.Fatalf("size %d", ex.Size)
		}
		conn.Close()
		<-r.done
	}
}

// checkREADMECount checks that README.md states a table test's size as
// it is: pattern's first group, in the README with its line breaks folded
// into spaces, must be n.
func checkREADMECount(t *testing.T, pattern string, n int) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(b)), " ")
	m := regexp.MustCompile(pattern).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("README.md does not say %q", pattern)
	}
	if m[1] != strconv.Itoa(n) {
		t.Errorf("README.md says %s where the test has %d cases (pattern %q)", m[1], n, pattern)
	}
}
