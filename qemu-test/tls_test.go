package qemutest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// Where the TLS tests put the PKI inside the initramfs.
const (
	guestCA         = "/etc/nbdroot/ca-cert.pem"
	guestClientCert = "/etc/nbdroot/client-cert.pem"
	guestClientKey  = "/etc/nbdroot/client-key.pem"
)

// initramfsWith builds an initramfs like the rig's, plus host files copied
// into it (guest path → host path), and returns its path.
func (r *rig) initramfsWith(t testing.TB, files map[string]string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initramfs.img")
	args := []string{"mkinitramfs", "-o", out, "--binary", r.nbdroot, "--kernel", r.kernel}
	for dst, src := range files {
		args = append(args, "--file", src+":"+dst)
	}
	if b, err := exec.Command(r.nbdroot, args...).CombinedOutput(); err != nil {
		t.Fatalf("nbdroot %v: %v\n%s", args, err, b)
	}
	return out
}

// bootTLS boots initrd against srv with nbds:// and extra kernel arguments,
// asserts that the root was reached through a TLS connection the keeper
// relays, and that the guest's write is in the image once the server has
// stopped.
func bootTLS(t *testing.T, r *rig, img, initrd string, srv *testrig.Server, extra string) console {
	t.Helper()
	tok := token(t)
	c := r.boot(t, guest{
		initramfs: initrd,
		append: fmt.Sprintf("%s nbdroot=nbds://10.0.2.2:%d/rootfs nbdroot.tls.ca=%s %s rw testinit.token=%s",
			staticIP, srv.Port, guestCA, extra, tok),
	})
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: root=/dev/nbd0 fstype=ext4`, `TESTINIT: write=ok token=`+tok)
	srv.Stop()
	if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
		t.Fatalf("image holds %q, want %q: the guest's write over TLS was lost", got, tok)
	}
	return c
}

// TestBootTLSNbdkit boots over TLS from nbdkit --tls=require, with the CA in
// the initramfs.
func TestBootTLSNbdkit(t *testing.T) {
	r := setup(t)
	certs := testrig.Certs(t, t.TempDir())
	img := r.rootImage(t)
	srv := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+certs.Dir, "file", img)
	initrd := r.initramfsWith(t, map[string]string{guestCA: certs.CA})
	bootTLS(t, r, img, initrd, srv, "")
}

// TestBootTLSQemuNBD boots over TLS from qemu-nbd with tls-creds-x509
// (verify-peer=off: no client certificate is asked for).
func TestBootTLSQemuNBD(t *testing.T) {
	r := setup(t)
	certs := testrig.Certs(t, t.TempDir())
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs", testrig.TLS(certs.Dir))
	initrd := r.initramfsWith(t, map[string]string{guestCA: certs.CA})
	bootTLS(t, r, img, initrd, srv, "")
}

// TestBootTLSWrongCA: the initramfs trusts a CA that did not sign the
// server's certificate. The boot refuses the server at once, naming the
// certificate problem, and the failure action (poweroff) happens.
func TestBootTLSWrongCA(t *testing.T) {
	r := setup(t)
	certs := testrig.Certs(t, t.TempDir())
	img := r.rootImage(t)
	srv := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+certs.Dir, "file", img)
	initrd := r.initramfsWith(t, map[string]string{guestCA: certs.WrongCA})
	c := r.boot(t, guest{
		initramfs: initrd,
		append: fmt.Sprintf("%s nbdroot=nbds://10.0.2.2:%d/rootfs nbdroot.tls.ca=%s nbdroot.boot.on_failure=poweroff nbdroot.boot.failure_delay=0s",
			staticIP, srv.Port, guestCA),
	})
	c.must(t,
		`nbdroot: connect: .*certificate signed by unknown authority.*\(not retrying this server\)`,
		`nbdroot: boot failed: .*certificate signed by unknown authority`,
		`nbdroot: boot failed: powering off`,
		`reboot: Power down`,
	)
	c.mustNot(t, `TESTINIT:`, `Kernel panic`, `Attempted to kill init`, `connect: attempt 2:`)
}

// TestBootTLSClientCert boots from nbdkit --tls-verify-peer with the client
// certificate and key in the initramfs; then, to show that the server does
// check them, a client certificate from another CA is refused.
func TestBootTLSClientCert(t *testing.T) {
	r := setup(t)
	certs := testrig.Certs(t, t.TempDir())
	img := r.rootImage(t)
	srv := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+certs.Dir, "--tls-verify-peer", "file", img)
	clientArgs := fmt.Sprintf("nbdroot.tls.cert=%s nbdroot.tls.key=%s", guestClientCert, guestClientKey)

	t.Run("signed", func(t *testing.T) {
		initrd := r.initramfsWith(t, map[string]string{
			guestCA:         certs.CA,
			guestClientCert: certs.ClientCert,
			guestClientKey:  certs.ClientKey,
		})
		bootTLS(t, r, img, initrd, srv, clientArgs)
		if regexpMatch(`Error in the certificate`, srv.Output()) {
			t.Fatalf("nbdkit refused the signed client certificate:\n%s", srv.Output())
		}
		srv.Restart() // bootTLS stopped it to read the image
	})

	t.Run("wrong-client", func(t *testing.T) {
		initrd := r.initramfsWith(t, map[string]string{
			guestCA:         certs.CA,
			guestClientCert: certs.WrongClientCert,
			guestClientKey:  certs.WrongClientKey,
		})
		c := r.boot(t, guest{
			initramfs: initrd,
			append: fmt.Sprintf("%s nbdroot=nbds://10.0.2.2:%d/rootfs nbdroot.tls.ca=%s %s nbdroot.server.deadline=10s nbdroot.boot.on_failure=poweroff nbdroot.boot.failure_delay=0s",
				staticIP, srv.Port, guestCA, clientArgs),
		})
		c.must(t, `nbdroot: boot failed: connect: `, `reboot: Power down`)
		c.mustNot(t, `TESTINIT:`, `Kernel panic`)
		// The guest cannot tell why: under TLS 1.3 nbdkit verifies the
		// client after the client's handshake has finished, and resets
		// the connection. The server says why.
		if !regexpMatch(`gnutls_handshake: Error in the certificate`, srv.Output()) {
			t.Fatalf("nbdkit did not refuse the client certificate:\n%s", srv.Output())
		}
	})
}
