package qemutest

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// BenchmarkDistro boots the same Debian root (testrig.DebianRootNBDClient,
// ifupdown with `auto` distroNIC, as a stock server install leaves it)
// through nbdroot and through Debian's own
// initramfs-tools + nbd-client, served by nbdkit, and reports the medians
// over b.N boots of the time from the kernel's start to `systemctl
// is-system-running --wait` returning `running` (s-to-running, the guest's
// CLOCK_BOOTTIME), and from `systemctl poweroff` to the kernel's "reboot:
// Power down" (s-poweroff, printk clock). Run it with `make bench-distro`
// (-benchtime 3x). The NIC is ens2 under initramfs-tools (its udev renames
// it before ipconfig brings it up) and under nbdroot, which names it as the
// root's udev will. (With systemd-networkd instead, initramfs-tools loses
// its disk as soon as networkd starts and never reaches running.)
func BenchmarkDistro(b *testing.B) {
	for _, boot := range []string{"nbdroot", "initramfs-tools"} {
		b.Run(boot, func(b *testing.B) {
			r := setup(b)
			release := strings.TrimPrefix(filepath.Base(r.kernel), "vmlinuz-")
			tree, debianInitrd := testrig.DebianRootNBDClient(b, release)
			initramfs, extra := "", ""
			if boot == "initramfs-tools" {
				initramfs, extra = debianInitrd, " root=/dev/nbd0"
			}
			var running, off []float64
			hung := 0
			for i := 0; i < b.N; i++ {
				img := distroImage(b, tree, testrig.NetIfupdown, distroNIC)
				run := r.distroRun(b, img, distroSetup{initramfs: initramfs}, func(port int) string {
					return fmt.Sprintf("nbdroot=10.0.2.2:%d/rootfs%s ip=dhcp rw distro.action=poweroff", port, extra)
				})
				m := distroRunningAt.FindStringSubmatch(string(run.c))
				if m == nil {
					b.Fatalf("boot %d: systemd never reported running (exited=%v, %v); lines:\n%s", i+1, run.exited, run.qerr,
						run.c.grep(`DISTRO: (state|failed|journal|request)|reboot:|nbd|Kernel panic|Gave up`))
				}
				s, _ := strconv.ParseFloat(m[1], 64)
				running = append(running, s)
				d, ok := offTime(run.c, "reboot: Power down")
				if !ok || !run.exited {
					// The boot's figure stands; the power-off has none,
					// and is counted (a failure would end the benchmark
					// before its median).
					hung++
					b.Logf("boot %d: running at %.1fs, but no power-off (requested=%v exited=%v, %v); lines:\n%s", i+1, s,
						run.requested, run.exited, run.qerr, run.c.grep(`nbdroot-distro|reboot:|Possible stuck|I/O error|DISTRO: (state|request)`))
					continue
				}
				off = append(off, d.Seconds())
				b.Logf("boot %d: running at %.1fs, power-off in %.1fs", i+1, s, d.Seconds())
			}
			b.ReportMetric(median(running), "s-to-running")
			if len(off) > 0 {
				b.ReportMetric(median(off), "s-poweroff")
			}
			b.ReportMetric(float64(hung), "poweroffs-hung")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// distroRunningAt is the helper's line once systemd reports running.
var distroRunningAt = regexp.MustCompile(`DISTRO: state=running t=([0-9.]+)`)
