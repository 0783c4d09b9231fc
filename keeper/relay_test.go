package keeper

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tlsPair returns the two ends of a TLS 1.3 connection over loopback TCP.
func tlsPair(tb testing.TB) (client, server net.Conn) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"relay"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		_ = s.Handshake()
		accepted <- s
	}()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err := c.Handshake(); err != nil {
		tb.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestRelay checks that bytes cross the relay both ways unchanged and that
// the kernel's end sees the server hang up.
func TestRelay(t *testing.T) {
	client, server := tlsPair(t)
	fd, release, err := kernelSocket(client)
	if err != nil {
		t.Fatal(err)
	}
	kernel := ownFile(t, fd)
	defer kernel.Close()
	defer release()
	go server.Write([]byte("from the server"))
	buf := make([]byte, 15)
	if _, err := io.ReadFull(kernel, buf); err != nil || string(buf) != "from the server" {
		t.Fatalf("kernel end read %q, %v", buf, err)
	}
	if _, err := kernel.Write([]byte("from the kernel")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "from the kernel" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	server.Close()
	if n, err := kernel.Read(buf); err != io.EOF {
		t.Fatalf("after the server hung up the kernel end read %d bytes, %v; want EOF (a dead link)", n, err)
	}
}

// BenchmarkRelay reads 16 MiB sent over TLS, directly from the TLS
// connection ("direct") and through the keeper's socketpair relay, as the
// kernel does ("relay"): the difference is the relay's own cost.
func BenchmarkRelay(b *testing.B) {
	const size = 16 << 20
	payload := make([]byte, 1<<20)
	for _, mode := range []string{"direct", "relay"} {
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(size)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				client, server := tlsPair(b)
				var r io.Reader = client
				release := func() {}
				if mode == "relay" {
					fd, rel, err := kernelSocket(client)
					if err != nil {
						b.Fatal(err)
					}
					f := ownFile(b, fd)
					r, release = f, func() { rel(); f.Close() }
				}
				go func() {
					for sent := 0; sent < size; sent += len(payload) {
						if _, err := server.Write(payload); err != nil {
							return
						}
					}
				}()
				b.StartTimer()
				if _, err := io.CopyN(io.Discard, r, size); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				release()
			}
		})
	}
}

// ownFile returns a file of its own for fd (a dup), as the kernel holds its
// own reference to the socket it is given.
func ownFile(tb testing.TB, fd int) *os.File {
	tb.Helper()
	d, err := unix.Dup(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return os.NewFile(uintptr(d), "kernel")
}
