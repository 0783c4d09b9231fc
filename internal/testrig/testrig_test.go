package testrig

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests check the rig itself with a minimal hand-written client: the
// real handshake is package negotiate's, tested against these servers in
// negotiate/interop_test.go.

const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	oldstyleMagic = 0x00420281861253
	replyMagic    = 0x3e889045565a9
	optList       = 3
	optStartTLS   = 5
	repAck        = 1
)

// greeting reads the server's first 16 bytes and returns the second magic.
func greeting(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	var b [16]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("reading greeting: %v", err)
	}
	if m := binary.BigEndian.Uint64(b[:8]); m != nbdMagic {
		t.Fatalf("greeting magic %#x, want NBDMAGIC", m)
	}
	return binary.BigEndian.Uint64(b[8:])
}

func dial(t *testing.T, s *Server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", s, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return c
}

// startTLS does the newstyle greeting and NBD_OPT_STARTTLS, then a TLS
// handshake with cfg, and returns its error.
func startTLS(t *testing.T, s *Server, cfg *tls.Config) error {
	t.Helper()
	c := dial(t, s)
	if m := greeting(t, c); m != optMagic {
		t.Fatalf("%s: not newstyle (magic %#x)", s, m)
	}
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("reading handshake flags: %v", err)
	}
	req := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE|NO_ZEROES
	req = binary.BigEndian.AppendUint64(req, optMagic)
	req = binary.BigEndian.AppendUint32(req, optStartTLS)
	req = binary.BigEndian.AppendUint32(req, 0)
	if _, err := c.Write(req); err != nil {
		t.Fatalf("sending STARTTLS: %v", err)
	}
	var rep [20]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatalf("reading STARTTLS reply: %v", err)
	}
	if m := binary.BigEndian.Uint64(rep[:8]); m != replyMagic {
		t.Fatalf("reply magic %#x", m)
	}
	if typ, n := binary.BigEndian.Uint32(rep[12:16]), binary.BigEndian.Uint32(rep[16:20]); typ != repAck || n != 0 {
		t.Fatalf("STARTTLS reply type %#x length %d, want ACK", typ, n)
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	// A server that checks client certificates under TLS 1.3 reports a
	// refusal only after the handshake: ask for the export list and read
	// the reply header (whatever the reply, the server is talking to us).
	req = binary.BigEndian.AppendUint64(nil, optMagic)
	req = binary.BigEndian.AppendUint32(req, optList)
	req = binary.BigEndian.AppendUint32(req, 0)
	if _, err := tc.Write(req); err != nil {
		return fmt.Errorf("after handshake: %w", err)
	}
	if _, err := io.ReadFull(tc, rep[:]); err != nil {
		return fmt.Errorf("after handshake: %w", err)
	}
	if m := binary.BigEndian.Uint64(rep[:8]); m != replyMagic {
		t.Fatalf("reply magic %#x after TLS", m)
	}
	return nil
}

func clientTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", caFile)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

func TestNeedFindsTools(t *testing.T) {
	Need(t, "sh") // present everywhere; must neither skip nor fail
	if t.Skipped() || t.Failed() {
		t.Fatal("Need rejected sh")
	}
}

func TestNeedMissingTool(t *testing.T) {
	// Run Need in a subprocess so the skip or failure it causes is observed
	// rather than suffered.
	if os.Getenv("TESTRIG_NEED_CHILD") != "" {
		Need(t, "nbdroot-no-such-tool")
		t.Fatal("Need returned for a missing tool")
	}
	for _, ci := range []string{"", "1"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNeedMissingTool$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTRIG_NEED_CHILD=1", "CI="+ci)
		out, err := cmd.CombinedOutput()
		if ci == "" {
			if err != nil || !bytes.Contains(out, []byte("--- SKIP")) || !bytes.Contains(out, []byte("nbdroot-no-such-tool not in PATH")) {
				t.Errorf("without CI: want a skip naming the tool, got %v:\n%s", err, out)
			}
		} else if err == nil || !bytes.Contains(out, []byte("nbdroot-no-such-tool missing from PATH, run make deps")) {
			t.Errorf("with CI: want a failure naming the tool, got %v:\n%s", err, out)
		}
	}
}

func TestFreePort(t *testing.T) {
	p := FreePort(t)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("FreePort gave %d, which is not free: %v", p, err)
	}
	l.Close()
}

func TestCerts(t *testing.T) {
	cs := Certs(t, t.TempDir())
	for _, f := range []string{cs.ServerKey, cs.ClientKey, cs.WrongClientKey} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(cs.CA)
	pool.AppendCertsFromPEM(pem)
	srv, err := tls.LoadX509KeyPair(cs.ServerCert, cs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(srv.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "10.0.2.2"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: pool}); err == nil {
		t.Error("server certificate verifies for example.com")
	}
	wrong := x509.NewCertPool()
	pem, _ = os.ReadFile(cs.WrongCA)
	wrong.AppendCertsFromPEM(pem)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: wrong}); err == nil {
		t.Error("server certificate verifies under the wrong CA")
	}
	cli, err := tls.LoadX509KeyPair(cs.ClientCert, cs.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	cleaf, _ := x509.ParseCertificate(cli.Certificate[0])
	if _, err := cleaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
}

func TestExt4Image(t *testing.T) {
	dir := t.TempDir()
	img := Ext4Image(t, dir, 8<<20, map[string][]byte{
		"etc/hostname": []byte("guest\n"),
		"sbin/init":    []byte("#!/bin/sh\necho hi\n"),
	})
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 8<<20 {
		t.Errorf("image size %d, want %d", fi.Size(), 8<<20)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var magic [2]byte
	if _, err := f.ReadAt(magic[:], 1024+0x38); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint16(magic[:]) != 0xef53 {
		t.Fatalf("no ext superblock magic in %s", img)
	}
	if _, err := exec.LookPath("debugfs"); err == nil {
		out, err := exec.Command("debugfs", "-R", "stat /sbin/init", img).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Mode:  0755") {
			t.Errorf("debugfs stat /sbin/init: %v\n%s", err, out)
		}
	}
}

func TestRawImage(t *testing.T) {
	p := RawImage(t, filepath.Join(t.TempDir(), "raw.img"), 200<<10)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 200<<10 {
		t.Fatalf("size %d", len(data))
	}
	if got := string(data[8*20000 : 8*20001]); got != "00004e20" {
		t.Errorf("word 20000 = %q, want 00004e20", got)
	}
}

func TestSparseImage(t *testing.T) {
	dir := t.TempDir()
	for _, format := range []string{"raw", "qcow2"} {
		img := SparseImage(t, filepath.Join(dir, "sparse."+format), format, 8<<20,
			Write{Offset: 1 << 20, Length: 64 << 10, Pattern: 0xab}, Write{Offset: 4 << 20, Length: 1 << 20, Zero: true})
		var data, total int64
		for _, e := range QemuImgMap(t, "-f", format, img) {
			total += e.Length
			if e.Data {
				data += e.Length
				if e.Zero {
					t.Errorf("%s: %+v is data and zero", format, e)
				}
			}
		}
		// raw: qemu-img create allocates the first 4 KiB of a raw file.
		if total != 8<<20 || (data != 64<<10 && data != 64<<10+4096) {
			t.Errorf("%s: map covers %d bytes with %d of data, want 8 MiB with 64 KiB", format, total, data)
		}
		// qemu-nbd serves it in that format.
		s := QemuNBD(t, img, "disk", Format(format))
		if m := greeting(t, dial(t, s)); m != optMagic {
			t.Errorf("%s: qemu-nbd greeting %#x, want newstyle", format, m)
		}
	}
}

func TestAllocations(t *testing.T) {
	got := Allocations([]MapEntry{
		{Start: 0, Length: 4096, Data: true},
		{Start: 4096, Length: 4096, Data: true},
		{Start: 8192, Length: 8192, Zero: true},
		{Start: 16384, Length: 4096, Data: true, Zero: true},
		{Start: 20480, Length: 4096},
		{Start: 24576, Length: 4096, Zero: true},
	})
	want := []Allocation{{0, 8192, 0}, {8192, 8192, 3}, {16384, 4096, 2}, {20480, 4096, 1}, {24576, 4096, 3}}
	if !slices.Equal(got, want) {
		t.Errorf("Allocations = %v, want %v", got, want)
	}
}

func TestQemuNBD(t *testing.T) {
	dir := t.TempDir()
	s := QemuNBD(t, RawImage(t, filepath.Join(dir, "disk.img"), 1<<20), "disk")
	if m := greeting(t, dial(t, s)); m != optMagic {
		t.Errorf("qemu-nbd greeting %#x, want newstyle", m)
	}
	// Restart keeps the port and serves again.
	s.Restart()
	if m := greeting(t, dial(t, s)); m != optMagic {
		t.Errorf("after restart: greeting %#x", m)
	}
}

func TestNbdkitOldstyle(t *testing.T) {
	s := Nbdkit(t, "--oldstyle", "memory", "1M")
	c := dial(t, s)
	if m := greeting(t, c); m != oldstyleMagic {
		t.Fatalf("greeting %#x, want oldstyle", m)
	}
	var size [8]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		t.Fatal(err)
	}
	if n := binary.BigEndian.Uint64(size[:]); n != 1<<20 {
		t.Errorf("oldstyle size %d, want %d", n, 1<<20)
	}
}

func TestServerStartFailureShowsOutput(t *testing.T) {
	Need(t, "nbdkit")
	// Run in a subprocess: the failure is the point.
	if os.Getenv("TESTRIG_FAIL_CHILD") != "" {
		Nbdkit(t, "no-such-plugin-xyz")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestServerStartFailureShowsOutput$")
	cmd.Env = append(os.Environ(), "TESTRIG_FAIL_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("exited before listening")) || !bytes.Contains(out, []byte("no-such-plugin-xyz")) {
		t.Errorf("want a failure with nbdkit's own message, got %v:\n%s", err, out)
	}
}

func TestNbdServer(t *testing.T) {
	dir := t.TempDir()
	s := NbdServer(t, map[string]string{
		"one": RawImage(t, filepath.Join(dir, "one.img"), 1<<20),
		"two": RawImage(t, filepath.Join(dir, "two.img"), 2<<20),
	})
	if m := greeting(t, dial(t, s)); m != optMagic {
		t.Errorf("nbd-server greeting %#x, want newstyle", m)
	}
	pid := s.pid
	s.Restart()
	if s.pid == pid {
		t.Errorf("restart kept pid %d", pid)
	}
	if !waitGone(pid, 0) {
		t.Errorf("old nbd-server %d still running", pid)
	}
	if m := greeting(t, dial(t, s)); m != optMagic {
		t.Errorf("after restart: greeting %#x", m)
	}
	s.Stop()
	if _, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		t.Error("nbd-server still accepts connections after Stop")
	}
}

// TestTLSServersAcceptCerts checks that the GnuTLS servers load the
// generated PKI and present a certificate the Go client verifies, and that
// peer verification refuses a client certificate from the wrong CA.
func TestTLSServersAcceptCerts(t *testing.T) {
	dir := t.TempDir()
	cs := Certs(t, filepath.Join(dir, "pki"))
	img := RawImage(t, filepath.Join(dir, "disk.img"), 1<<20)
	good := clientTLS(t, cs.CA, cs.ClientCert, cs.ClientKey)
	wrongClient := clientTLS(t, cs.CA, cs.WrongClientCert, cs.WrongClientKey)
	noClient := clientTLS(t, cs.CA, "", "")

	servers := []struct {
		name   string
		start  func(t *testing.T) *Server
		verify bool // refuses a client without a certificate from its CA
	}{
		{"nbdkit", func(t *testing.T) *Server {
			return Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "memory", "1M")
		}, false},
		{"nbdkit-verify", func(t *testing.T) *Server {
			return Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "--tls-verify-peer", "memory", "1M")
		}, true},
		{"qemu-nbd", func(t *testing.T) *Server { return QemuNBD(t, img, "disk", TLS(cs.Dir), Shared(4)) }, false},
		{"qemu-nbd-verify", func(t *testing.T) *Server { return QemuNBD(t, img, "disk", TLS(cs.Dir), VerifyPeer(), Shared(4)) }, true},
		{"nbd-server", func(t *testing.T) *Server { return NbdServer(t, map[string]string{"disk": img}, TLS(cs.Dir)) }, true},
	}
	for _, tc := range servers {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.start(t)
			if err := startTLS(t, s, good); err != nil {
				t.Fatalf("TLS with the right CA and client certificate: %v\n%s", err, s.Output())
			}
			if err := startTLS(t, s, noClient); (err != nil) != tc.verify {
				t.Errorf("TLS without a client certificate: err = %v, want refusal %v", err, tc.verify)
			}
			if tc.verify {
				if err := startTLS(t, s, wrongClient); err == nil {
					t.Error("TLS with a client certificate from the wrong CA was accepted")
				}
			}
		})
	}
}
