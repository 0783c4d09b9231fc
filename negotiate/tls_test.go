package negotiate

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a server certificate for dnsName.
func (ca *testCA) leaf(t testing.TB, dnsName string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestTLS(t *testing.T) {
	ca := newCA(t, "nbd test CA")
	other := newCA(t, "some other CA")
	serverCfg := &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "nbd.test")}}
	const timeout = 2 * time.Second

	t.Run("success", func(t *testing.T) {
		for _, force := range []bool{false, true} {
			srv := goodServer{style: "fixed", exports: []fakeExport{rootfs}, tls: serverCfg, forceTLS: force}
			r := startFakeTCP(t, srv.serve)
			ex, conn, err := Handshake(context.Background(), r.cli, Options{
				Export:  "rootfs",
				TLS:     &tls.Config{ServerName: "nbd.test", RootCAs: ca.pool},
				Timeout: timeout,
			})
			if err != nil {
				t.Fatalf("Handshake: %v", err)
			}
			if _, ok := conn.(*tls.Conn); !ok {
				t.Errorf("connection is a %T, want *tls.Conn", conn)
			}
			if ex.TLSVersion != tls.VersionTLS13 || ex.TLSCipher == 0 {
				t.Errorf("TLS version %#x cipher %#x, want TLS 1.3", ex.TLSVersion, ex.TLSCipher)
			}
			if ex.Path != PathGo || ex.Size != rootfs.size || ex.MinBlock != 512 {
				t.Errorf("export %+v", *ex)
			}
			if err := Disconnect(conn); err != nil {
				t.Errorf("Disconnect: %v", err)
			}
			f := r.wait(t)
			if !slices.Equal(f.opts, []uint32{OptStartTLS, OptGo}) {
				t.Errorf("options %v, want STARTTLS then GO", optNames(f.opts))
			}
		}
	})

	t.Run("list", func(t *testing.T) {
		srv := goodServer{style: "fixed", exports: []fakeExport{rootfs, scratch}, tls: serverCfg, forceTLS: true}
		r := startFakeTCP(t, srv.serve)
		got, err := List(context.Background(), r.cli, Options{
			TLS:     &tls.Config{ServerName: "nbd.test", RootCAs: ca.pool},
			Timeout: timeout,
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Name != "rootfs" || got[0].Size != rootfs.size || got[1].TLSVersion != tls.VersionTLS13 {
			t.Errorf("List: %+v", got)
		}
		f := r.wait(t)
		if !slices.Equal(f.opts, []uint32{OptStartTLS, OptStructuredReply, OptList, OptInfo, OptInfo, OptAbort}) {
			t.Errorf("options %v", optNames(f.opts))
		}
	})

	for _, tc := range []struct {
		name   string
		client *tls.Config
		server *tls.Config
		want   []string
	}{{
		name:   "wrong CA",
		client: &tls.Config{ServerName: "nbd.test", RootCAs: other.pool},
		server: serverCfg,
		want:   []string{"negotiate: TLS handshake: ", "certificate signed by unknown authority"},
	}, {
		name:   "wrong server name",
		client: &tls.Config{ServerName: "other.test", RootCAs: ca.pool},
		server: serverCfg,
		want:   []string{"negotiate: TLS handshake: ", "certificate is valid for nbd.test, not other.test"},
	}, {
		name:   "TLS 1.1 only server",
		client: &tls.Config{ServerName: "nbd.test", RootCAs: ca.pool, MinVersion: tls.VersionTLS10},
		server: &tls.Config{Certificates: serverCfg.Certificates, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
		want:   []string{"negotiate: TLS handshake: ", "protocol version"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := goodServer{style: "fixed", exports: []fakeExport{rootfs}, tls: tc.server}
			r := startFakeTCP(t, srv.serve)
			start := time.Now()
			_, conn, err := Handshake(context.Background(), r.cli, Options{Export: "rootfs", TLS: tc.client, Timeout: timeout})
			if err == nil {
				conn.Close()
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if d := time.Since(start); d > timeout {
				t.Errorf("took %v", d)
			}
			f := r.wait(t)
			if !slices.Equal(f.opts, []uint32{OptStartTLS}) {
				t.Errorf("options %v after a failed TLS handshake, want STARTTLS only", optNames(f.opts))
			}
		})
	}

	t.Run("config not modified", func(t *testing.T) {
		cfg := &tls.Config{ServerName: "nbd.test", RootCAs: ca.pool, MinVersion: tls.VersionTLS10}
		srv := goodServer{style: "fixed", exports: []fakeExport{rootfs}, tls: serverCfg}
		r := startFakeTCP(t, srv.serve)
		_, conn, err := Handshake(context.Background(), r.cli, Options{Export: "rootfs", TLS: cfg, Timeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		r.wait(t)
		if cfg.MinVersion != tls.VersionTLS10 {
			t.Errorf("caller's MinVersion changed to %#x", cfg.MinVersion)
		}
	})

	t.Run("refused after TLS", func(t *testing.T) {
		srv := goodServer{style: "fixed", exports: []fakeExport{rootfs}, tls: serverCfg}
		r := startFakeTCP(t, srv.serve)
		_, _, err := Handshake(context.Background(), r.cli, Options{
			Export: "nosuch", TLS: &tls.Config{ServerName: "nbd.test", RootCAs: ca.pool}, Timeout: timeout,
		})
		if !errors.Is(err, ErrExportNotFound) {
			t.Fatalf("error %v, want export not found", err)
		}
		f := r.wait(t)
		if !slices.Equal(f.opts, []uint32{OptStartTLS, OptGo, OptAbort}) {
			t.Errorf("options %v, want STARTTLS, GO, ABORT (over TLS)", optNames(f.opts))
		}
	})
}
