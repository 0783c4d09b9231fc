package negotiate_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/negotiate"
)

// BenchmarkHandshakeNbdkit measures one complete connection as boot makes it
// against nbdkit's memory plugin on loopback: TCP dial, the fixed-newstyle
// greeting, NBD_OPT_GO with block sizes, then NBD_CMD_DISC and close. Most of
// the time is the server's (nbdkit starts a thread per connection); allocs/op
// is ours.
func BenchmarkHandshakeNbdkit(b *testing.B) {
	s := testrig.Nbdkit(b, "memory", "64M")
	benchHandshake(b, s.Addr, negotiate.Options{}, func(exp *negotiate.Export) {
		if exp.Path != negotiate.PathGo {
			b.Fatalf("path %q, want %q", exp.Path, negotiate.PathGo)
		}
	})
}

// BenchmarkHandshakeNbdkitTLS is BenchmarkHandshakeNbdkit with STARTTLS and a
// verified TLS 1.3 handshake (RSA 2048 certificates) before NBD_OPT_GO.
func BenchmarkHandshakeNbdkitTLS(b *testing.B) {
	cs := testrig.Certs(b, b.TempDir())
	s := testrig.Nbdkit(b, "--tls=require", "--tls-certificates="+cs.Dir, "memory", "64M")
	pem, err := os.ReadFile(cs.CA)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	opts := negotiate.Options{TLS: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}
	benchHandshake(b, s.Addr, opts, func(exp *negotiate.Export) {
		if exp.TLSVersion == 0 {
			b.Fatal("no TLS")
		}
	})
}

// benchHandshake times dial, Handshake with opts, check and Disconnect
// against the server at addr.
func benchHandshake(b *testing.B, addr string, opts negotiate.Options, check func(*negotiate.Export)) {
	ctx := context.Background()
	var d net.Dialer
	b.ReportAllocs()
	for b.Loop() {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		exp, conn, err := negotiate.Handshake(ctx, conn, opts)
		if err != nil {
			b.Fatal(err)
		}
		check(exp)
		if err := negotiate.Disconnect(conn); err != nil {
			b.Fatal(err)
		}
	}
}
