package qemutest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// labDocs are the lab's example files in docs/lab, which these tests boot
// with so that they cannot rot.
const labDocs = "../docs/lab"

// pxeLab starts a lab serving img as export "rootfs" on the lab's first NBD
// port, with dnsmasq configured by docs/lab/dnsmasq.conf plus set, and the
// kernel, nbdroot's initramfs and docs/lab/boot.ipxe (its kernel line
// extended by cmdline) on TFTP.
func (r *rig) pxeLab(t *testing.T, img, cmdline string, set map[string]string) (*testrig.Lab, *testrig.Server, *testrig.Process) {
	t.Helper()
	lab := testrig.NewLab(t)
	srv := testrig.QemuNBD(t, img, "rootfs", testrig.InLab(lab))
	if srv.Port != testrig.LabPort {
		t.Fatalf("the lab's first server listens on %d, docs/lab/dnsmasq.conf says %d", srv.Port, testrig.LabPort)
	}
	dns := lab.Dnsmasq(t, testrig.DnsmasqConfig{Base: filepath.Join(labDocs, "dnsmasq.conf"), Set: set})
	script, err := os.ReadFile(filepath.Join(labDocs, "boot.ipxe"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(script), "\n") {
		if strings.HasPrefix(line, "kernel ") {
			line += " panic=-1 " + cmdline
		}
		lines = append(lines, line)
	}
	files := map[string][]byte{"boot.ipxe": []byte(strings.Join(lines, "\n"))}
	for name, src := range map[string]string{"vmlinuz": r.kernel, "initramfs.img": r.initramfs} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	testrig.WriteTree(t, lab.TFTPRoot(), files)
	return lab, srv, dns
}

// TestLabPXE boots a machine that has no kernel of its own: its NIC's iPXE
// ROM takes DHCP from dnsmasq, fetches docs/lab/boot.ipxe, the kernel and
// nbdroot's initramfs over TFTP; nbdroot=dhcp takes the server from the
// DHCP root-path and boots the root. The NIC is an e1000 with ipxe-qemu's
// ROM (iPXE prints on the VGA console only, so dnsmasq's log is the
// witness). virtio-net's ROM from the same package sent no DHCPDISCOVER
// within a minute under TCG, so it is not tested.
func TestLabPXE(t *testing.T) {
	for _, nic := range []string{"e1000"} {
		t.Run(nic, func(t *testing.T) {
			r := setup(t)
			img := r.rootImage(t)
			tok := token(t)
			lab, srv, dns := r.pxeLab(t, img, "testinit.token="+tok, nil)
			c := r.boot(t, guest{lab: lab, mac: testrig.MAC(0), nic: nic, pxe: true})
			rootReached(t, c, "rw")
			c.must(t,
				`Kernel command line: .*nbdroot=dhcp`,
				`nbdroot: network: ens2 10\.77\.0\.[0-9]+/24 from DHCP server 10\.77\.0\.1`,
				`nbdroot: attach: /dev/nbd0 is export "rootfs" .* from 10\.77\.0\.1:10809/rootfs`,
				`TESTINIT: write=ok`,
			)
			if out := dns.Output(); !strings.Contains(out, "user class: iPXE") || !strings.Contains(out, "sent "+filepath.Join(lab.TFTPRoot(), "boot.ipxe")) ||
				!strings.Contains(out, "sent "+filepath.Join(lab.TFTPRoot(), "initramfs.img")) {
				t.Errorf("dnsmasq did not serve the boot\n--- dnsmasq ---\n%s", dns.Output())
			}
			addr, err := lab.LeaseOf(testrig.MAC(0))
			if err != nil {
				t.Errorf("lease file: %v", err)
			} else if !strings.Contains(string(c), "ens2 "+addr.String()+"/24") {
				t.Errorf("the guest did not configure its lease %s", addr)
			}
			srv.Stop()
			if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
				t.Fatalf("image holds %q, want %q", got, tok)
			}
		})
	}
}
