package qemutest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

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
// witness). virtio-net is not tested: SeaBIOS 1.16.2 never runs a
// virtio-net-pci device's ROM, neither ipxe-qemu's efi-virtio.rom nor its
// BIOS-only pxe-virtio.rom (its debug console, isa-debugcon at 0x402, lists
// no "Running option rom" for the NIC), and boots "No bootable device".
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

// labClients is how many guests boot together in the many-clients lab.
const labClients = 4

// clientRun is one guest of a many-clients boot.
type clientRun struct {
	token string
	c     console
	// toInit is the wall time from QEMU's start to the root's init's
	// first line; wrote and sees when its write and its listing appeared.
	toInit, wrote, sees time.Duration
}

// labManyClients boots labClients guests at once in one lab, each with a
// MAC of its own, from one read-only export (qemu-nbd --read-only
// --shared) with a tmpfs overlay, nbdroot=dhcp taking the server from the
// DHCP root-path of docs/lab/dnsmasq.conf. Each guest runs testinit's
// clients scenario; settle is how long each waits after its write before
// it lists what it sees. It returns the guests in MAC order and the image.
func (r *rig) labManyClients(t testing.TB, settle int) ([]clientRun, string) {
	t.Helper()
	lab := testrig.NewLab(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs", testrig.InLab(lab), testrig.ReadOnly(), testrig.Shared(labClients))
	if srv.Port != testrig.LabPort {
		t.Fatalf("the lab's first server listens on %d, docs/lab/dnsmasq.conf says %d", srv.Port, testrig.LabPort)
	}
	lab.Dnsmasq(t, testrig.DnsmasqConfig{Base: filepath.Join(labDocs, "dnsmasq.conf")})
	runs := make([]clientRun, labClients)
	gs := make([]*running, labClients)
	for i := range gs {
		runs[i].token = fmt.Sprintf("client%d-%s", i, strconv.FormatInt(time.Now().UnixNano(), 36))
		gs[i] = r.start(t, guest{lab: lab, mac: testrig.MAC(i), append: fmt.Sprintf(
			"nbdroot=dhcp ip=dhcp nbdroot.device.read_only=true nbdroot.root.overlay=tmpfs rw testinit.mode=clients testinit.settle=%d testinit.token=%s",
			settle, runs[i].token)})
	}
	// Watch the consoles together: when did each guest reach its init,
	// write, and list?
	marks := []struct {
		re *regexp.Regexp
		at func(*clientRun) *time.Duration
	}{
		{regexp.MustCompile(`TESTINIT: uptime=`), func(c *clientRun) *time.Duration { return &c.toInit }},
		{regexp.MustCompile(`TESTINIT: client wrote=`), func(c *clientRun) *time.Duration { return &c.wrote }},
		{regexp.MustCompile(`TESTINIT: client sees=`), func(c *clientRun) *time.Duration { return &c.sees }},
	}
	for pending := true; pending; time.Sleep(50 * time.Millisecond) {
		pending = false
		for i, g := range gs {
			c := string(g.console())
			for _, m := range marks {
				if at := m.at(&runs[i]); *at == 0 {
					if m.re.MatchString(c) {
						*at = time.Since(g.started)
					} else if done, _ := g.p.Exited(); !done && time.Since(g.started) < g.timeout {
						pending = true
					}
				}
			}
		}
	}
	for i, g := range gs {
		runs[i].c = g.wait(t)
	}
	srv.Stop()
	return runs, img
}

// TestLabFourClients boots four guests at once in the lab from one
// read-only export, each with a tmpfs overlay: each reaches its init from
// the DHCP root-path, writes into its overlay and, once every guest has
// written, sees its own file alone; the image is untouched.
func TestLabFourClients(t *testing.T) {
	r := setup(t)
	runs, img := r.labManyClients(t, 20)
	for i, run := range runs {
		t.Logf("guest %d (%s): init after %v, wrote after %v, listed after %v", i, testrig.MAC(i),
			run.toInit.Round(100*time.Millisecond), run.wrote.Round(100*time.Millisecond), run.sees.Round(100*time.Millisecond))
		t.Logf("guest %d: %s", i, run.c.grep(`nbdroot: root ready in|Run /init`))
		rootReached(t, run.c, "rw")
		run.c.must(t,
			`nbdroot: network: ens2 10\.77\.0\.[0-9]+/24 from DHCP server 10\.77\.0\.1`,
			`nbdroot: attach: /dev/nbd0 is export "rootfs" .* from 10\.77\.0\.1:10809/rootfs`,
			`TESTINIT: root=overlay fstype=overlay`,
			`TESTINIT: client wrote=ok`,
			`TESTINIT: client sees=`+regexp.QuoteMeta(run.token)+` `,
		)
		for _, other := range runs {
			if other.wrote > run.sees {
				t.Fatalf("guest %d listed its files %v after its start, before guest %s wrote (%v): raise the settle time",
					i, run.sees, other.token, other.wrote)
			}
		}
	}
	out, err := exec.Command("debugfs", "-R", "ls -l /nbdroot-test", img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "client") {
		t.Fatalf("an overlay's write reached the read-only image:\n%s", out)
	}
}

// BenchmarkLabFourBoots boots four lab guests at once (as
// TestLabFourClients) and reports, over b.N rounds, the median and the
// worst wall time from a guest's QEMU start to its root's init. Run it
// with `make bench-lab`.
func BenchmarkLabFourBoots(b *testing.B) {
	r := setup(b)
	var all, worst []float64
	for i := 0; i < b.N; i++ {
		runs, _ := r.labManyClients(b, 1)
		w := 0.0
		for _, run := range runs {
			if run.toInit == 0 {
				b.Fatalf("a guest never reached its init\n--- console ---\n%s", run.c)
			}
			all = append(all, run.toInit.Seconds())
			w = max(w, run.toInit.Seconds())
		}
		worst = append(worst, w)
	}
	b.ReportMetric(median(all), "s-to-init-median")
	b.ReportMetric(median(worst), "s-to-init-slowest-of-4")
	b.ReportMetric(0, "ns/op")
}
