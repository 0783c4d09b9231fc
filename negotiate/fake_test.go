package negotiate

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// tape encodes protocol fields big-endian: uint64, uint32, uint16, uint8,
// []byte and string are written as they are.
func tape(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		case uint16:
			b = binary.BigEndian.AppendUint16(b, v)
		case uint8:
			b = append(b, v)
		case Flags:
			b = binary.BigEndian.AppendUint16(b, uint16(v))
		case []byte:
			b = append(b, v...)
		case string:
			b = append(b, v...)
		default:
			panic(fmt.Sprintf("tape: unsupported %T", p))
		}
	}
	return b
}

// Tapes of common server messages.
func greetingOld(size uint64, flags uint32) []byte {
	return tape(magicInit, magicOldstyle, size, flags, make([]byte, zeroPad))
}
func greetingNew(hflags uint16) []byte { return tape(magicInit, magicOpt, hflags) }
func replyTape(opt, typ uint32, payload []byte) []byte {
	return tape(magicReply, opt, typ, uint32(len(payload)), payload)
}
func infoExportTape(opt uint32, size uint64, flags Flags) []byte {
	return replyTape(opt, RepInfo, tape(infoExport, size, flags))
}
func infoBlockTape(opt uint32, minB, pref, maxB uint32) []byte {
	return replyTape(opt, RepInfo, tape(infoBlockSize, minB, pref, maxB))
}
func infoStringTape(opt uint32, typ uint16, s string) []byte {
	return replyTape(opt, RepInfo, tape(typ, s))
}
func serverTape(name, desc string) []byte {
	return replyTape(OptList, RepServer, tape(uint32(len(name)), name, desc))
}
func ackTape(opt uint32) []byte { return replyTape(opt, RepAck, nil) }
func metaContextTape(opt, id uint32, name string) []byte {
	return replyTape(opt, RepMetaContext, tape(id, name))
}

// Tapes of the transmission phase.
func chunkTape(flags, typ uint16, cookie uint64, payload []byte) []byte {
	return tape(magicStructuredReply, flags, typ, cookie, uint32(len(payload)), payload)
}
func noneTape(cookie uint64) []byte { return chunkTape(chunkFlagDone, chunkNone, cookie, nil) }
func statusTape(flags uint16, cookie uint64, id uint32, ds ...descriptor) []byte {
	b, _ := blockStatus{ContextID: id, Descriptors: ds}.MarshalBinary()
	return chunkTape(flags, chunkBlockStatus, cookie, b)
}
func errorTape(flags, typ uint16, cookie uint64, e errorChunk) []byte {
	b, _ := e.MarshalBinary()
	return chunkTape(flags, typ, cookie, b)
}
func simpleTape(errno uint32, cookie uint64) []byte { return tape(magicSimpleReply, errno, cookie) }

// readRequest reads one transmission-phase request; ok is false once the
// client is gone.
func (f *fake) readRequest() (request, bool) {
	b := f.read(requestLen)
	if b == nil {
		return request{}, false
	}
	var r request
	if err := r.UnmarshalBinary(b); err != nil {
		f.failf("request: %v", err)
		return request{}, false
	}
	return r, true
}

// fake is the server end of a scripted conversation. Its methods record the
// first error and then do nothing, so scripts read straight through.
type fake struct {
	c   net.Conn
	err error
	// log of the options the client sent, in order
	opts []uint32
	// cflags the client sent
	cflags uint32
}

func (f *fake) failf(format string, args ...any) {
	if f.err == nil {
		f.err = fmt.Errorf(format, args...)
	}
}

func (f *fake) write(b []byte) {
	if f.err != nil {
		return
	}
	if _, err := f.c.Write(b); err != nil {
		f.err = err
	}
}

func (f *fake) send(parts ...any) { f.write(tape(parts...)) }

func (f *fake) read(n int) []byte {
	if f.err != nil {
		return nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(f.c, b); err != nil {
		f.err = err
		return nil
	}
	return b
}

// readClientFlags reads the 32-bit client flags.
func (f *fake) readClientFlags() uint32 {
	b := f.read(4)
	if b == nil {
		return 0
	}
	f.cflags = binary.BigEndian.Uint32(b)
	return f.cflags
}

// readOption reads one option request; ok is false once the client is gone.
func (f *fake) readOption() (opt uint32, data []byte, ok bool) {
	h := f.read(16)
	if h == nil {
		return 0, nil, false
	}
	if m := binary.BigEndian.Uint64(h); m != magicOpt {
		f.failf("option magic %#x", m)
		return 0, nil, false
	}
	opt = binary.BigEndian.Uint32(h[8:])
	n := binary.BigEndian.Uint32(h[12:])
	if n > 1<<16 {
		f.failf("option length %d", n)
		return 0, nil, false
	}
	data = f.read(int(n))
	if f.err != nil {
		return 0, nil, false
	}
	f.opts = append(f.opts, opt)
	return opt, data, true
}

// expectOption reads one option and fails unless it is want.
func (f *fake) expectOption(want uint32) []byte {
	opt, data, ok := f.readOption()
	if ok && opt != want {
		f.failf("client sent %s, want %s", OptionName(opt), OptionName(want))
	}
	return data
}

// drain reads and discards until the client closes.
func (f *fake) drain() { _, _ = io.Copy(io.Discard, f.c) }

// finish acknowledges NBD_OPT_ABORT, if that is what the client sends next,
// then drains.
func (f *fake) finish() {
	if opt, _, ok := f.readOption(); ok && opt == OptAbort {
		f.write(ackTape(OptAbort))
	}
	f.drain()
}

// fakeExport is one export of goodServer.
type fakeExport struct {
	name, desc        string
	size              uint64
	flags             Flags
	minB, prefB, maxB uint32   // 0: no NBD_INFO_BLOCK_SIZE
	canonical         string   // sent as NBD_INFO_NAME when non-empty
	contexts          []string // metadata contexts, for a structured server
}

// goodServer plays a conforming server of the given style.
type goodServer struct {
	style       string // "oldstyle", "newstyle" or "fixed"
	noZeroes    bool   // offer NBD_FLAG_NO_ZEROES
	noGo        bool   // NBD_REP_ERR_UNSUP for NBD_OPT_GO and NBD_OPT_INFO
	noList      bool   // NBD_REP_ERR_UNSUP for NBD_OPT_LIST
	exports     []fakeExport
	defaultName string      // the export "" selects
	tls         *tls.Config // accept NBD_OPT_STARTTLS with this config
	forceTLS    bool        // FORCEDTLS: NBD_REP_ERR_TLS_REQD before STARTTLS
	structured  bool        // accept NBD_OPT_STRUCTURED_REPLY and the meta-context options
	noMetaList  bool        // NBD_REP_ERR_UNSUP for NBD_OPT_LIST_META_CONTEXT
	// transmission, if set, runs once the export is selected.
	transmission func(f *fake)

	// Results, for the test to check after the script ended.
	infoReqs [][]uint16 // information requests of each NBD_OPT_INFO/GO
	tlsState *tls.ConnectionState
}

func (g *goodServer) lookup(name string) (fakeExport, bool) {
	if name == "" {
		name = g.defaultName
	}
	for _, e := range g.exports {
		if e.name == name {
			return e, true
		}
	}
	return fakeExport{}, false
}

func (g *goodServer) serve(f *fake) {
	if g.style == "oldstyle" {
		e := g.exports[0]
		f.write(greetingOld(e.size, uint32(e.flags)))
		f.drain()
		return
	}
	var hflags uint16
	if g.style == "fixed" {
		hflags |= hflagFixedNewstyle
	}
	if g.noZeroes {
		hflags |= hflagNoZeroes
	}
	f.write(greetingNew(hflags))
	cflags := f.readClientFlags()
	if f.err != nil {
		return
	}
	if cflags&^uint32(hflags) != 0 {
		f.failf("client flags %#x, but the server offered only %#x", cflags, hflags)
		return
	}
	inTLS := false
	for {
		opt, data, ok := f.readOption()
		if !ok {
			return
		}
		if g.forceTLS && !inTLS && opt != OptStartTLS && opt != OptAbort {
			if opt == OptExportName {
				return // it cannot error: hang up
			}
			f.write(replyTape(opt, RepErrTLSReqd, []byte("TLS is required on this server")))
			continue
		}
		if g.style != "fixed" && opt != OptExportName {
			f.failf("client sent %s to a non-fixed newstyle server", OptionName(opt))
			return
		}
		switch opt {
		case OptExportName:
			e, ok := g.lookup(string(data))
			if !ok {
				return // the only way to refuse
			}
			f.send(e.size, e.flags)
			if cflags&cflagNoZeroes == 0 {
				f.write(make([]byte, zeroPad))
			}
			g.transmit(f)
			return
		case OptAbort:
			f.write(ackTape(OptAbort))
			return
		case OptList:
			if g.noList {
				f.write(replyTape(opt, RepErrUnsup, nil))
				continue
			}
			for _, e := range g.exports {
				f.write(serverTape(e.name, e.desc))
			}
			f.write(ackTape(OptList))
		case OptStartTLS:
			if g.tls == nil || inTLS {
				f.write(replyTape(opt, RepErrPolicy, []byte("TLS not configured")))
				continue
			}
			f.write(ackTape(opt))
			tc := tls.Server(f.c, g.tls)
			if err := tc.Handshake(); err != nil {
				f.err = err
				return
			}
			st := tc.ConnectionState()
			g.tlsState = &st
			f.c = tc
			inTLS = true
		case OptInfo, OptGo:
			if g.noGo {
				f.write(replyTape(opt, RepErrUnsup, []byte("what is that?")))
				continue
			}
			name, reqs, err := parseInfoRequest(data)
			if err != nil {
				f.failf("%s: %v", OptionName(opt), err)
				return
			}
			g.infoReqs = append(g.infoReqs, reqs)
			e, ok := g.lookup(name)
			if !ok {
				f.write(replyTape(opt, RepErrUnknown, []byte("export not found")))
				continue
			}
			f.write(infoExportTape(opt, e.size, e.flags))
			if e.canonical != "" && slices.Contains(reqs, infoName) {
				f.write(infoStringTape(opt, infoName, e.canonical))
			}
			if e.desc != "" && slices.Contains(reqs, infoDescription) {
				f.write(infoStringTape(opt, infoDescription, e.desc))
			}
			// An unknown information type, which the client must skip.
			f.write(replyTape(opt, RepInfo, tape(uint16(99), "future")))
			if e.minB != 0 {
				f.write(infoBlockTape(opt, e.minB, e.prefB, e.maxB))
			}
			f.write(ackTape(opt))
			if opt == OptGo {
				g.transmit(f)
				return
			}
		case OptStructuredReply:
			if !g.structured {
				f.write(replyTape(opt, RepErrUnsup, []byte("no structured replies here")))
				continue
			}
			f.write(ackTape(opt))
		case OptListMetaContext, OptSetMetaContext:
			if !g.structured || (opt == OptListMetaContext && g.noMetaList) {
				f.write(replyTape(opt, RepErrUnsup, nil))
				continue
			}
			var req metaContextRequest
			if err := req.UnmarshalBinary(data); err != nil {
				f.failf("%s: %v", OptionName(opt), err)
				return
			}
			e, ok := g.lookup(req.Name)
			if !ok {
				f.write(replyTape(opt, RepErrUnknown, []byte("export not found")))
				continue
			}
			for i, c := range e.contexts {
				if len(req.Queries) == 0 || slices.Contains(req.Queries, c) {
					id := uint32(0)
					if opt == OptSetMetaContext {
						id = uint32(i + 1)
					}
					f.write(metaContextTape(opt, id, c))
				}
			}
			f.write(ackTape(opt))
		default:
			f.write(replyTape(opt, RepErrUnsup, nil))
		}
	}
}

func (g *goodServer) transmit(f *fake) {
	if g.transmission != nil {
		g.transmission(f)
		return
	}
	f.drain()
}

// parseInfoRequest decodes the data of NBD_OPT_INFO/GO.
func parseInfoRequest(data []byte) (string, []uint16, error) {
	if len(data) < 6 {
		return "", nil, errors.New("short request")
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+6 > uint64(len(data)) {
		return "", nil, errors.New("name length beyond the data")
	}
	name := string(data[4 : 4+n])
	rest := data[4+n:]
	cnt := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*cnt {
		return "", nil, fmt.Errorf("%d requests in %d bytes", cnt, len(rest))
	}
	var reqs []uint16
	for i := range cnt {
		reqs = append(reqs, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return name, reqs, nil
}

// session runs script as the server over net.Pipe and returns its fake once
// the script is done. The client's connection must be closed by the caller
// (Handshake and List close it themselves on error).
type run struct {
	f    *fake
	done chan struct{}
	cli  net.Conn
}

func startFake(script func(f *fake)) *run {
	cli, srv := net.Pipe()
	return startFakeOn(cli, srv, script)
}

// startFakeTCP is startFake over a 127.0.0.1 TCP connection, for TLS: over
// net.Pipe, whose writes wait for the reader, a client that aborts a TLS
// handshake halfway deadlocks with the server until the deadline.
func startFakeTCP(t testing.TB, script func(f *fake)) *run {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	return startFakeOn(cli, srv, script)
}

func startFakeOn(cli, srv net.Conn, script func(f *fake)) *run {
	r := &run{f: &fake{c: srv}, done: make(chan struct{}), cli: cli}
	go func() {
		defer close(r.done)
		defer srv.Close()
		script(r.f)
	}()
	return r
}

// wait waits for the script to end and returns what the server saw.
func (r *run) wait(t testing.TB) *fake {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.cli.Close()
		t.Fatal("fake server did not finish")
	}
	return r.f
}
