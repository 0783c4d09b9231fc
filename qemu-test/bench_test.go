package qemutest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// BenchmarkBoot measures, per boot, the time from the kernel's "Run /init"
// to the root's init running (rootexec.sh's first line: nbdroot's part of
// the boot) and to the rig's Go init's first line after it, and nbdroot's
// network step, with a static ip=, with DHCP from QEMU's user network, and
// with DHCP from dnsmasq on a lab bridge (nbdroot=dhcp: the root-path of
// docs/lab/dnsmasq.conf), and reports the medians over b.N boots. The
// static case alternates with boots of the floor (floor.sh: modprobe and
// a static address, nothing else) and reports its median and nbdroot's
// ratio to it, and the time the first and a second start of the nbdroot
// binary take on the floor's guest, with nbdroot's ratio to the floor
// plus one and plus two first starts. It also reports nbdroot's size, and
// the size and the kernel's unpack time of the initramfs with each
// compression (unpack).
// Run it with `make bench-boot` (-benchtime 5x).
func BenchmarkBoot(b *testing.B) {
	for _, mode := range []struct {
		name, net string
		lab       bool
	}{
		{"static", staticIP, false},
		{"dhcp", "", false},
		{"lab-dhcp", "", true},
	} {
		b.Run(mode.name, func(b *testing.B) {
			r := setup(b)
			img := r.benchRoot(b)
			g := guest{}
			if mode.lab {
				lab := testrig.NewLab(b)
				// Shared: a guest that powers off leaves its connection
				// half-open (nothing on the bridge tells qemu-nbd), and
				// the next one must not queue behind it.
				testrig.QemuNBD(b, img, "rootfs", testrig.InLab(lab), testrig.Shared(16))
				lab.Dnsmasq(b, testrig.DnsmasqConfig{Base: filepath.Join(labDocs, "dnsmasq.conf")})
				g.lab, g.mac = lab, testrig.MAC(0)
				g.append = "nbdroot=dhcp ip=dhcp ro testinit.mode=ro"
			} else {
				srv := testrig.QemuNBD(b, img, "rootfs")
				g.append = fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs ro testinit.mode=ro", mode.net, srv.Port)
			}
			floor := ""
			if mode.name == "static" {
				floor = r.floorImage(b)
			}
			var samples, goInits, network, floors, colds, warms []float64
			for i := 0; i < b.N; i++ {
				if floor != "" {
					f, cold, warm := r.floorBoot(b, floor)
					floors, colds, warms = append(floors, f), append(colds, cold), append(warms, warm)
				}
				c := r.boot(b, g)
				d, err := between(c, runInitRe, rootExecRe)
				if err != nil {
					b.Fatalf("%v\n--- console ---\n%s", err, c)
				}
				gi, err := runInitToInit(c)
				if err != nil {
					b.Fatalf("%v\n--- console ---\n%s", err, c)
				}
				samples, goInits = append(samples, d), append(goInits, gi)
				network = append(network, benchValue(b, c, `nbdroot: root ready in .*network ([0-9.]+)s`))
			}
			b.ReportMetric(median(samples), "s-init-to-root-exec")
			// Until 2026-12-03 the phase ended here, at the first line of
			// the rig's Go init, whose cold start (its binary read over
			// NBD) is the root's cost.
			b.ReportMetric(median(goInits), "s-init-to-go-init")
			b.ReportMetric(median(network), "s-network-step")
			if floor != "" {
				b.ReportMetric(median(floors), "s-floor")
				b.ReportMetric(median(samples)/median(floors), "x-floor")
				// nbdroot starts a Go program twice where the floor starts
				// none: PID 1 cold, and the keeper from the same file, warm
				// (until 2026-12-02 it ran from a copy on /run, cold too).
				// Its ratio to the floor plus one cold start is what the
				// rest of its work costs; x-floor-2go, against two, is kept
				// so that figures compare across runs.
				b.ReportMetric(median(colds), "s-go-start-cold")
				b.ReportMetric(median(warms), "s-go-start-warm")
				b.ReportMetric(median(samples)/(median(floors)+median(colds)), "x-floor-1go")
				b.ReportMetric(median(samples)/(median(floors)+2*median(colds)), "x-floor-2go")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
	b.Run("sizes", func(b *testing.B) {
		r := setup(b)
		fi, err := os.Stat(r.nbdroot)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-binary")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("unpack", benchUnpack)
}

// benchUnpack builds the default initramfs with each compression
// mkinitramfs offers and boots each b.N times (interleaved, with the
// static address), and reports each image's size and the median time the
// kernel takes to unpack it: from "Trying to unpack rootfs image as
// initramfs" to "Freeing initrd memory" on the printk clock, and, as the
// baseline of the same run, gzip's; the ratio against it. The kernel
// unpacks before it runs /init, so this time adds to every boot.
func benchUnpack(b *testing.B) {
	r := setup(b)
	img := r.rootImage(b)
	srv := testrig.QemuNBD(b, img, "rootfs")
	comps := []string{"gzip", "zstd", "xz"}
	images := map[string]string{}
	for _, c := range comps {
		images[c] = filepath.Join(b.TempDir(), "initramfs."+c)
		out, err := exec.Command(r.nbdroot, "mkinitramfs", "-o", images[c], "--compress", c, "--binary", r.nbdroot, "--kernel", r.kernel).CombinedOutput()
		if err != nil {
			b.Fatalf("nbdroot mkinitramfs --compress %s: %v\n%s", c, err, out)
		}
		fi, err := os.Stat(images[c])
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-initramfs-"+c)
	}
	samples := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		for _, c := range comps {
			con := r.boot(b, guest{initramfs: images[c], append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs ro testinit.mode=ro", staticIP, srv.Port)})
			d, err := unpackTime(con)
			if err != nil {
				b.Fatalf("%s: %v\n--- console ---\n%s", c, err, con)
			}
			if _, err := runInitToInit(con); err != nil {
				b.Fatalf("%s: %v\n--- console ---\n%s", c, err, con)
			}
			samples[c] = append(samples[c], d)
		}
	}
	for _, c := range comps {
		b.ReportMetric(median(samples[c]), "s-unpack-"+c)
		b.ReportMetric(median(samples[c])/median(samples["gzip"]), "x-unpack-"+c+"-vs-gzip")
	}
	b.ReportMetric(0, "ns/op")
}

var (
	unpackStartRe = regexp.MustCompile(`\[\s*([0-9.]+)\] Trying to unpack rootfs image as initramfs`)
	unpackEndRe   = regexp.MustCompile(`\[\s*([0-9.]+)\] Freeing initrd memory`)
)

// unpackTime returns the seconds the kernel took to unpack the initramfs.
func unpackTime(c console) (float64, error) { return between(c, unpackStartRe, unpackEndRe) }

// between returns the seconds from the first line matching from to the
// first matching to, each regexp's first group being the line's time.
func between(c console, from, to *regexp.Regexp) (float64, error) {
	a, z := from.FindStringSubmatch(string(c)), to.FindStringSubmatch(string(c))
	if a == nil || z == nil {
		return 0, fmt.Errorf("console lacks a line matching %q or %q", from, to)
	}
	t0, _ := strconv.ParseFloat(a[1], 64)
	t1, _ := strconv.ParseFloat(z[1], 64)
	return t1 - t0, nil
}

// floorImage writes the floor's initramfs: nbdroot's base archive (its
// module tree) with busybox and floor.sh as /init.
func (r *rig) floorImage(b *testing.B) string {
	b.Helper()
	busybox := testrig.Tool(b, "busybox")
	img := filepath.Join(b.TempDir(), "floor.img")
	out, err := exec.Command(r.nbdroot, "mkinitramfs", "--base-only", "--shell", busybox, "--file", "floor.sh:/init", "--file", r.nbdroot+":/nbdroot",
		"--kernel", r.kernel, "--compress", "gzip", "-o", img).CombinedOutput()
	if err != nil {
		b.Fatalf("nbdroot mkinitramfs (floor): %v\n%s", err, out)
	}
	return img
}

// floorBoot boots the floor image once and returns the seconds from
// "Run /init" to its last line, and its two timed starts of the nbdroot
// binary (floor.sh): the first, cold, and the second, warm.
func (r *rig) floorBoot(b *testing.B, img string) (floor, cold, warm float64) {
	b.Helper()
	c := r.boot(b, guest{initramfs: img})
	d, err := between(c, runInitRe, floorDoneRe)
	if err != nil || strings.Contains(string(c), "FLOOR: modprobe") {
		b.Fatalf("the floor's boot failed (%v)\n--- console ---\n%s", err, c)
	}
	starts := map[string]float64{}
	for _, m := range goStartRe.FindAllStringSubmatch(string(c), -1) {
		t0, err0 := strconv.ParseFloat(m[2], 64)
		t1, err1 := strconv.ParseFloat(m[3], 64)
		if err0 != nil || err1 != nil {
			b.Fatalf("bad gostart line %q", m[0])
		}
		starts[m[1]] = t1 - t0
	}
	if len(starts) != 2 {
		b.Fatalf("the floor timed %d starts of nbdroot, want a cold and a warm one\n--- console ---\n%s", len(starts), c)
	}
	return d, starts["cold"], starts["warm"]
}

var (
	floorDoneRe = regexp.MustCompile(`FLOOR: done uptime=([0-9.]+)`)
	goStartRe   = regexp.MustCompile(`FLOOR: gostart (cold|warm) ([0-9.]+) ([0-9.]+)`)
	runInitRe   = regexp.MustCompile(`\[\s*([0-9.]+)\] Run /init as init process`)
	rootInitRe  = regexp.MustCompile(`TESTINIT: uptime=([0-9.]+)`)
	rootExecRe  = regexp.MustCompile(`ROOTEXEC: uptime=([0-9.]+)`)
)

// benchRoot writes BenchmarkBoot's root: the rig's root with rootexec.sh
// as /sbin/init in front of testinit, and busybox to run it.
func (r *rig) benchRoot(b *testing.B) string {
	b.Helper()
	busybox := testrig.Tool(b, "busybox")
	return r.rootImageWith(b, "rootexec.sh", 64<<20, map[string]string{"bin/busybox": busybox, "sbin/testinit": r.testinit})
}

// runInitToInit returns the seconds from "Run /init" to the root's init.
func runInitToInit(c console) (float64, error) { return between(c, runInitRe, rootInitRe) }

// BenchmarkKeeper boots a 320 MiB root served by qemu-nbd and reports, from
// inside the guest, the keeper's resident memory and the time to read
// 256 MiB of /dev/nbd0 sequentially with a cold cache, with one connection
// and with four (qemu-nbd --shared=4 sets CAN_MULTI_CONN; the kernel spreads
// requests over connections by CPU, so that guest gets two).
func BenchmarkKeeper(b *testing.B) {
	for _, tc := range []struct {
		name     string
		conns    int
		cpus     int
		tls      bool
		cpuModel string
	}{
		{"conn1", 1, 1, false, ""},
		{"conn4-smp2", 4, 2, false, ""},
		// The keeper relays every byte; under TCG the guest's emulated
		// crypto dominates (boot.BenchmarkRelay measures the relay itself).
		{"conn1-tls", 1, 1, true, ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := setup(b)
			img := r.rootImageWith(b, r.benchinit, 320<<20, nil)
			g := guest{cpus: tc.cpus, cpuModel: tc.cpuModel}
			var srv *testrig.Server
			if tc.tls {
				certs := testrig.Certs(b, b.TempDir())
				srv = testrig.QemuNBD(b, img, "rootfs", testrig.Shared(4), testrig.TLS(certs.Dir))
				g.initramfs = r.initramfsWith(b, map[string]string{guestCA: certs.CA})
				g.append = fmt.Sprintf("%s nbdroot=nbds://10.0.2.2:%d/rootfs nbdroot.tls.ca=%s ro", staticIP, srv.Port, guestCA)
			} else {
				srv = testrig.QemuNBD(b, img, "rootfs", testrig.Shared(4))
				g.append = fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs ro nbdroot.device.connections=%d", staticIP, srv.Port, tc.conns)
			}
			var reads, rss []float64
			for i := 0; i < b.N; i++ {
				c := r.boot(b, g)
				c.must(b, fmt.Sprintf(`nbdroot: keeper nbd0: .* %d connection\(s\), netlink`, tc.conns))
				reads = append(reads, benchValue(b, c, `BENCH: read_mib=256 seconds=([0-9.]+)`))
				rss = append(rss, benchValue(b, c, `BENCH: keeper_rss_after_kib=([0-9]+)`))
			}
			b.ReportMetric(median(reads), "s-read-256MiB")
			b.ReportMetric(256/median(reads), "MiB/s")
			b.ReportMetric(median(rss)/1024, "MiB-keeper-rss")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// benchValue returns the number pattern's group captures on the console.
func benchValue(b *testing.B, c console, pattern string) float64 {
	b.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(string(c))
	if m == nil {
		b.Fatalf("console lacks %q\n--- console ---\n%s", pattern, c)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkResume restarts the server twice (2 s outages) under the stress
// load of TestRestartUnderLoadNetlink and reports the median time from the
// server being back to the guest's first completed write.
func BenchmarkResume(b *testing.B) {
	var resumes []float64
	for i := 0; i < b.N; i++ {
		run := restartUnderLoad(b, "netlink", false)
		if run.errs != 0 {
			b.Fatalf("errors=%d", run.errs)
		}
		for _, d := range run.resumes {
			resumes = append(resumes, d.Seconds())
		}
	}
	if len(resumes) == 0 {
		b.Fatal("no resume measured")
	}
	b.ReportMetric(median(resumes), "s-resume-after-server-back")
	b.ReportMetric(0, "ns/op")
}
