package testrig

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CertSet is a TLS test PKI on disk, in the layout nbdkit
// (--tls-certificates=Dir), qemu-nbd (tls-creds-x509,dir=Dir) and nbd-server
// (certfile, keyfile, cacertfile) expect.
type CertSet struct {
	// Dir holds ca-cert.pem, server-cert.pem, server-key.pem,
	// client-cert.pem and client-key.pem.
	Dir string
	// CA is the CA certificate that signed the server and client certificates.
	CA string
	// ServerCert and ServerKey are the server's certificate and key. The
	// certificate names localhost, 127.0.0.1 and 10.0.2.2 (the host as seen
	// from a QEMU user-networking guest).
	ServerCert, ServerKey string
	// ClientCert and ClientKey are a client certificate signed by CA.
	ClientCert, ClientKey string

	// WrongDir holds an unrelated CA (ca-cert.pem) and a client certificate
	// it signed (client-cert.pem, client-key.pem), for negative tests.
	WrongDir string
	// WrongCA is a CA that signed nothing the servers present.
	WrongCA string
	// WrongClientCert and WrongClientKey are a client certificate signed by
	// WrongCA, which a verifying server must refuse.
	WrongClientCert, WrongClientKey string
}

// Certs generates a fresh PKI under dir (RSA 2048 keys, PKCS#8 PEM, keys mode
// 0600) and returns where it wrote it. GnuTLS-based servers accept it.
func Certs(t testing.TB, dir string) CertSet {
	t.Helper()
	cs := CertSet{
		Dir:        dir,
		CA:         filepath.Join(dir, "ca-cert.pem"),
		ServerCert: filepath.Join(dir, "server-cert.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client-cert.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
		WrongDir:   filepath.Join(dir, "wrong"),
	}
	cs.WrongCA = filepath.Join(cs.WrongDir, "ca-cert.pem")
	cs.WrongClientCert = filepath.Join(cs.WrongDir, "client-cert.pem")
	cs.WrongClientKey = filepath.Join(cs.WrongDir, "client-key.pem")
	if err := os.MkdirAll(cs.WrongDir, 0o755); err != nil {
		t.Fatalf("testrig: %v", err)
	}

	ca := newCA(t, "nbdroot test CA")
	writeCert(t, cs.CA, ca.der)
	srv := ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost", Organization: []string{"nbdroot test"}},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 2, 2)},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	srv.write(t, cs.ServerCert, cs.ServerKey)
	cli := ca.issue(t, clientTemplate("nbdroot test client"))
	cli.write(t, cs.ClientCert, cs.ClientKey)

	wrong := newCA(t, "nbdroot wrong CA")
	writeCert(t, cs.WrongCA, wrong.der)
	wcli := wrong.issue(t, clientTemplate("nbdroot wrong client"))
	wcli.write(t, cs.WrongClientCert, cs.WrongClientKey)
	return cs
}

func clientTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"nbdroot test"}},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// keyPair is a certificate with its key.
type keyPair struct {
	cert *x509.Certificate
	der  []byte
	key  *rsa.PrivateKey
}

func newKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("testrig: generating RSA key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("testrig: serial number: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

// newCA makes a self-signed CA valid from an hour ago for a day.
func newCA(t testing.TB, cn string) *keyPair {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"nbdroot test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("testrig: creating CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	return &keyPair{cert: cert, der: der, key: key}
}

// issue signs tmpl (a leaf: not a CA) with the CA, with a fresh key.
func (ca *keyPair) issue(t testing.TB, tmpl *x509.Certificate) *keyPair {
	t.Helper()
	key := newKey(t)
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = false
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("testrig: signing %q: %v", tmpl.Subject.CommonName, err)
	}
	return &keyPair{der: der, key: key}
}

func (kp *keyPair) write(t testing.TB, certPath, keyPath string) {
	t.Helper()
	writeCert(t, certPath, kp.der)
	der, err := x509.MarshalPKCS8PrivateKey(kp.key)
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	writePEM(t, keyPath, "PRIVATE KEY", der, 0o600)
}

func writeCert(t testing.TB, path string, der []byte) {
	t.Helper()
	writePEM(t, path, "CERTIFICATE", der, 0o644)
}

func writePEM(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	// WriteFile keeps the mode of an existing file: make it what we said.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatalf("testrig: %v", err)
	}
}
