package qemutest

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// BenchmarkBoot measures, per boot, the time from the kernel's "Run /init"
// to the root's init starting (its CLOCK_BOOTTIME at entry), with a static
// ip= and with DHCP, and reports the median over b.N boots. It also reports
// the sizes of nbdroot and of the default initramfs. Run it with
// `make bench-boot` (-benchtime 5x).
func BenchmarkBoot(b *testing.B) {
	for _, mode := range []struct{ name, net string }{
		{"static", staticIP},
		{"dhcp", ""},
	} {
		b.Run(mode.name, func(b *testing.B) {
			r := setup(b)
			img := r.rootImage(b)
			srv := testrig.QemuNBD(b, img, "rootfs")
			var samples []float64
			for i := 0; i < b.N; i++ {
				c := r.boot(b, guest{append: fmt.Sprintf("%s nbdroot=10.0.2.2:%d/rootfs ro testinit.mode=ro", mode.net, srv.Port)})
				d, err := runInitToInit(c)
				if err != nil {
					b.Fatalf("%v\n--- console ---\n%s", err, c)
				}
				samples = append(samples, d)
			}
			sort.Float64s(samples)
			b.ReportMetric(samples[len(samples)/2], "s-init-to-root-init")
			b.ReportMetric(0, "ns/op")
		})
	}
	b.Run("sizes", func(b *testing.B) {
		r := setup(b)
		for _, f := range []struct{ path, unit string }{{r.nbdroot, "MiB-binary"}, {r.initramfs, "MiB-initramfs-gzip"}} {
			fi, err := os.Stat(f.path)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(fi.Size())/(1<<20), f.unit)
		}
		b.ReportMetric(0, "ns/op")
	})
}

var (
	runInitRe  = regexp.MustCompile(`\[\s*([0-9.]+)\] Run /init as init process`)
	rootInitRe = regexp.MustCompile(`TESTINIT: uptime=([0-9.]+)`)
)

// runInitToInit returns the seconds from "Run /init" to the root's init.
func runInitToInit(c console) (float64, error) {
	a := runInitRe.FindStringSubmatch(string(c))
	z := rootInitRe.FindStringSubmatch(string(c))
	if a == nil || z == nil {
		return 0, fmt.Errorf("console lacks the Run /init line or the root init's uptime")
	}
	t0, _ := strconv.ParseFloat(a[1], 64)
	t1, _ := strconv.ParseFloat(z[1], 64)
	return t1 - t0, nil
}
