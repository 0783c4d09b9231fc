package dial_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/negotiate"
)

// dialSpec is a spec with short timeouts and one endpoint at addr.
func dialSpec(t *testing.T, addr, export string) (config.Spec, config.Endpoint) {
	t.Helper()
	spec, err := config.ParseTarget(addr + "/" + export)
	if err != nil {
		t.Fatal(err)
	}
	spec.Server.ConnectTimeout, spec.Server.HandshakeTimeout = 2*time.Second, 5*time.Second
	ep := spec.Server.Endpoints[0]
	return spec, ep
}

func TestTLSConfig(t *testing.T) {
	cs := testrig.Certs(t, t.TempDir())
	cfg, err := dial.TLSConfig(config.TLS{Enabled: true, CAFile: cs.CA, CertFile: cs.ClientCert, KeyFile: cs.ClientKey, VerifyPeer: true}, "10.0.2.2")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "10.0.2.2" || cfg.InsecureSkipVerify || cfg.MinVersion != tls.VersionTLS12 || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
		t.Errorf("config = ServerName %q, InsecureSkipVerify %v, MinVersion %#x, RootCAs %v, %d certificates",
			cfg.ServerName, cfg.InsecureSkipVerify, cfg.MinVersion, cfg.RootCAs != nil, len(cfg.Certificates))
	}
	cfg, err = dial.TLSConfig(config.TLS{Enabled: true, ServerName: "nbd.example", VerifyPeer: false}, "10.0.2.2")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "nbd.example" || !cfg.InsecureSkipVerify || cfg.RootCAs != nil || len(cfg.Certificates) != 0 {
		t.Errorf("no-verify config = %+v", cfg)
	}

	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  config.TLS
		host string
		want string
	}{
		{"missing CA", config.TLS{CAFile: "/nonexistent/ca.pem", VerifyPeer: true}, "h", "reading CA certificates"},
		{"not PEM", config.TLS{CAFile: bad, VerifyPeer: true}, "h", "no PEM certificate in CA file " + bad},
		{"cert without key", config.TLS{CertFile: cs.ClientCert, VerifyPeer: true}, "h", "needs both"},
		{"key mismatch", config.TLS{CertFile: cs.ClientCert, KeyFile: cs.ServerKey, VerifyPeer: true}, "h", "loading client certificate"},
		{"no name", config.TLS{VerifyPeer: true}, "", "no server name"},
	} {
		if _, err := dial.TLSConfig(tc.tls, tc.host); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to contain %q", tc.name, err, tc.want)
		}
	}
}

func TestDialNbdkit(t *testing.T) {
	s := testrig.Nbdkit(t, "memory", "64M")
	spec, ep := dialSpec(t, s.Addr, "")
	exp, conn, err := dial.Dial(context.Background(), spec, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer negotiate.Disconnect(conn)
	if exp.Size != 64<<20 {
		t.Errorf("size %d, want %d", exp.Size, 64<<20)
	}
	if exp.TLSVersion != 0 {
		t.Errorf("TLS version %#x on a plaintext connection", exp.TLSVersion)
	}
}

func TestDialTLS(t *testing.T) {
	cs := testrig.Certs(t, t.TempDir())
	s := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "--tls-verify-peer", "memory", "1M")
	spec, ep := dialSpec(t, s.Addr, "")
	spec.TLS = config.TLS{Enabled: true, CAFile: cs.CA, CertFile: cs.ClientCert, KeyFile: cs.ClientKey, VerifyPeer: true}
	exp, conn, err := dial.Dial(context.Background(), spec, ep)
	if err != nil {
		t.Fatal(err)
	}
	negotiate.Disconnect(conn)
	if exp.TLSVersion < tls.VersionTLS12 {
		t.Errorf("TLS version %#x", exp.TLSVersion)
	}

	// The wrong CA: a certificate error, naming the endpoint.
	spec.TLS.CAFile = cs.WrongCA
	_, _, err = dial.Dial(context.Background(), spec, ep)
	if err == nil || !strings.Contains(err.Error(), ep.String()) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA: err = %v", err)
	}
	// The same without verification succeeds (the client certificate is
	// still the right one).
	spec.TLS.VerifyPeer = false
	if _, conn, err := dial.Dial(context.Background(), spec, ep); err != nil {
		t.Errorf("no-verify: %v", err)
	} else {
		negotiate.Disconnect(conn)
	}
}

func TestDialUnixSocket(t *testing.T) {
	testrig.Need(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	p := testrig.Start(t, "nbdkit", "-f", "--exit-with-parent", "-U", sock, "memory", "2M")
	// nbdkit binds the socket before it listens: the file exists a moment
	// before a connection would be accepted, so wait for one that is.
	deadline := time.Now().Add(testrig.ReadyTimeout)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit accepts no connection at %s (%v):\n%s", sock, err, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	spec, _ := dialSpec(t, "127.0.0.1:1", "")
	ep := config.Endpoint{Socket: sock}
	exp, conn, err := dial.Dial(context.Background(), spec, ep)
	if err != nil {
		t.Fatal(err)
	}
	negotiate.Disconnect(conn)
	if exp.Size != 2<<20 {
		t.Errorf("size %d", exp.Size)
	}
}

func TestDialRefused(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testrig.FreePort(t)))
	spec, ep := dialSpec(t, addr, "rootfs")
	_, _, err := dial.Dial(context.Background(), spec, ep)
	want := addr + "/rootfs: connect: "
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v, want %q... connection refused", err, want)
	}
}

// TestDialHandshakeTimeout: a server that accepts and then says nothing is
// abandoned after HandshakeTimeout.
func TestDialHandshakeTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	spec, ep := dialSpec(t, l.Addr().String(), "x")
	spec.Server.HandshakeTimeout = 300 * time.Millisecond
	start := time.Now()
	_, _, err = dial.Dial(context.Background(), spec, ep)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Dial took %v with a 300ms handshake timeout", took)
	}
	var ne net.Error
	if err == nil || !strings.HasPrefix(err.Error(), l.Addr().String()+"/x: ") || !(errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)) {
		t.Errorf("err = %v, want a timeout naming the endpoint", err)
	}
}

// TestDialerQuery opens a query session as probe --map does: over TLS to
// nbdkit (whose memory plugin is all hole,zero until written), and, failing,
// with the endpoint in the error.
func TestDialerQuery(t *testing.T) {
	cs := testrig.Certs(t, t.TempDir())
	s := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "memory", "4M")
	spec, ep := dialSpec(t, s.Addr, "")
	spec.TLS = config.TLS{Enabled: true, CAFile: cs.CA, VerifyPeer: true}
	d, err := dial.NewDialer(spec)
	if err != nil {
		t.Fatal(err)
	}
	q, err := d.Query(context.Background(), ep, negotiate.ContextBaseAllocation)
	if err != nil {
		t.Fatal(err)
	}
	exp := q.Export()
	var got []negotiate.Extent
	err = q.Map(context.Background(), 0, exp.Size, func(e negotiate.Extent) error { got = append(got, e); return nil })
	if cerr := q.Close(); cerr != nil {
		t.Errorf("Close: %v", cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if exp.TLSVersion < tls.VersionTLS12 || !exp.StructuredReplies || len(got) == 0 {
		t.Errorf("export %+v, extents %v", exp, got)
	}
	var n uint64
	for _, e := range got {
		if e.Flags != negotiate.StateHole|negotiate.StateZero {
			t.Errorf("extent %+v of an unwritten memory disk", e)
		}
		n += e.Length
	}
	if n != 4<<20 {
		t.Errorf("extents cover %d bytes, want %d", n, 4<<20)
	}

	// Plain text against the TLS-only server: refused, naming the endpoint.
	spec.TLS = config.TLS{}
	d, err = dial.NewDialer(spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Query(context.Background(), ep, negotiate.ContextBaseAllocation)
	if err == nil || !strings.HasPrefix(err.Error(), ep.String()+": negotiate: ") || !errors.Is(err, negotiate.ErrTLSRequired) {
		t.Errorf("plaintext query of a TLS-only server: %v", err)
	}
}
