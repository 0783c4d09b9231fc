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
// Power down" (s-poweroff, printk clock). Through nbdroot, the power-off
// waits until the system has been up 60 s, and the root keeper's memory
// then is reported too: VmRSS from /proc/PID/status, which the issue names
// (MiB-keeper-vmrss), the exact resident and anonymous sizes from
// smaps_rollup (MiB-keeper-rss, MiB-keeper-anon); status's counters lag
// on the rig's kernel (Linux 6.1 syncs them every 64 faults per thread).
// Run it with `make bench-distro`
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
			initramfs, extra := "", " distro.keeper_at=60"
			if boot == "initramfs-tools" {
				initramfs, extra = debianInitrd, " root=/dev/nbd0"
			}
			var running, off []float64
			mem := map[string][]float64{}
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
				if boot == "nbdroot" {
					k := keeperMemoryRe.FindStringSubmatch(string(run.c))
					if k == nil {
						b.Fatalf("boot %d: no keeper memory line; lines:\n%s", i+1, run.c.grep(`DISTRO: keeper`))
					}
					for j, name := range []string{"vmrss", "rss", "anon"} {
						kb, _ := strconv.ParseFloat(k[j+1], 64)
						mem[name] = append(mem[name], kb/1024)
					}
				}
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
			for _, name := range []string{"vmrss", "rss", "anon"} {
				if len(mem[name]) > 0 {
					b.ReportMetric(median(mem[name]), "MiB-keeper-"+name)
				}
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// distroRunningAt is the helper's line once systemd reports running.
var distroRunningAt = regexp.MustCompile(`DISTRO: state=running t=([0-9.]+)`)

// keeperMemoryRe is the helper's report of the root keeper's memory: VmRSS,
// and smaps_rollup's Rss and Anonymous, in kB.
var keeperMemoryRe = regexp.MustCompile(`DISTRO: keeper pid=\d+ VmRSS=(\d+)kB .*rollup\.Rss=(\d+)kB rollup\.Anonymous=(\d+)kB`)
