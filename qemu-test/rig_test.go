// Package qemutest boots the real thing: the distribution kernel under QEMU
// (TCG), an initramfs made by `nbdroot mkinitramfs` with nbdroot as /init, and
// an ext4 root served by a real NBD server on 127.0.0.1, which the guest
// reaches at 10.0.2.2 through QEMU's user networking. The root's init is
// qemu-test/testinit, which reports on the console what it finds.
//
// These tests are skipped with -short. Outside CI a missing tool skips them
// with the reason; in CI (CI set) it fails them.
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
	"sync"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// bootTimeout bounds one guest boot, power-off included. A boot takes 2-10 s
// under TCG; the margin is for a loaded machine.
const bootTimeout = 3 * time.Minute

// rig is what every boot shares: the binaries, the initramfs, the kernel.
type rig struct {
	dir       string
	nbdroot   string // static nbdroot binary
	testinit  string // static test init for the root image
	benchinit string // static init of the benchmark's root image
	initramfs string
	kernel    string
	mkLog     string // what mkinitramfs printed
}

// buildRig builds the shared artefacts once per test binary.
var buildRig = sync.OnceValues(func() (*rig, error) {
	dir, err := os.MkdirTemp("", "nbdroot-qemu-test-")
	if err != nil {
		return nil, err
	}
	r := &rig{dir: dir, nbdroot: filepath.Join(dir, "nbdroot"), testinit: filepath.Join(dir, "testinit"), benchinit: filepath.Join(dir, "benchinit")}
	// nbdroot is built by the Makefile's own target, so the flags a user's
	// `make` builds with are the ones booted here.
	if out, err := exec.Command("make", "-s", "-C", "..", "build", "BIN="+r.nbdroot).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("make build: %v\n%s", err, out)
	}
	for _, b := range []struct{ out, pkg string }{{r.testinit, "./testinit"}, {r.benchinit, "./benchinit"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	r.kernel, err = newestKernel()
	if err != nil {
		return nil, err
	}
	r.initramfs = filepath.Join(dir, "initramfs.img")
	out, err := exec.Command(r.nbdroot, "mkinitramfs", "-o", r.initramfs, "--binary", r.nbdroot, "--kernel", r.kernel).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("nbdroot mkinitramfs: %v\n%s", err, out)
	}
	r.mkLog = string(out)
	return r, nil
})

// newestKernel returns the newest /boot/vmlinuz-*.
func newestKernel() (string, error) {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(ks) == 0 {
		return "", fmt.Errorf("no kernel in /boot (apt-get install linux-image-amd64)")
	}
	sort.Strings(ks)
	return ks[len(ks)-1], nil
}

// setup skips or fails as the environment requires and returns the rig.
func setup(t testing.TB) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("QEMU boot tests are skipped with -short")
	}
	testrig.Need(t, "qemu-system-x86_64", "mkfs.ext4", "e2fsck", "debugfs")
	if _, err := newestKernel(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: run make deps", err)
		}
		t.Skipf("%v", err)
	}
	r, err := buildRig()
	if err != nil {
		t.Fatalf("building the rig: %v", err)
	}
	return r
}

// rootImage writes an ext4 root whose /sbin/init is testinit, with the
// mount points every root has.
func (r *rig) rootImage(t testing.TB) string {
	t.Helper()
	return r.rootImageWith(t, r.testinit, 64<<20, nil)
}

// rootImageWith writes an ext4 root of size bytes whose /sbin/init is the
// binary init, with extra files (path in the root → file on the host).
func (r *rig) rootImageWith(t testing.TB, initPath string, size int64, extra map[string]string) string {
	t.Helper()
	return testrig.Ext4FromDir(t, filepath.Join(t.TempDir(), "root.img"), size, r.rootTree(t, initPath, extra))
}

// rootTree writes the tree of a root image: /sbin/init, the extra files
// and the mount points every root has; it returns its directory.
func (r *rig) rootTree(t testing.TB, initPath string, extra map[string]string) string {
	t.Helper()
	files := map[string][]byte{"nbdroot-test/README": []byte("written by the nbdroot QEMU tests\n")}
	for dst, src := range map[string]string{"sbin/init": initPath} {
		extra = mapWith(extra, dst, src)
	}
	for dst, src := range extra {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[dst] = b
	}
	src := t.TempDir()
	testrig.WriteTree(t, src, files)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		if err := os.Mkdir(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return src
}

// guest is one QEMU run.
type guest struct {
	initramfs string // default: the rig's
	append    string // kernel command line after the console settings
	timeout   time.Duration
	cpus      int    // virtual CPUs (default 1)
	memMiB    int    // guest RAM in MiB (default 512)
	cpuModel  string // QEMU -cpu (default QEMU's qemu64, which lacks AES-NI)

	// lab puts the guest on a lab's bridge (a tap of its own, MAC mac)
	// instead of QEMU's user network; QEMU runs inside the lab's namespace.
	lab *testrig.Lab
	mac string
	// nic is the NIC model (default virtio-net-pci).
	nic string
	// pxe boots from the NIC's iPXE ROM instead of -kernel and -initrd
	// (initramfs and append are then the lab's business: TFTP and the
	// iPXE script).
	pxe bool
	tap string // set by start
}

// console is what a guest printed on its serial console.
type console string

// boot runs g to power-off and returns its console. A guest that does not
// power off within the timeout fails the test with its console.
func (r *rig) boot(t testing.TB, g guest) console {
	t.Helper()
	return r.start(t, g).wait(t)
}

// running is a guest that has been started.
type running struct {
	p       *testrig.Process
	timeout time.Duration
	started time.Time
}

// start starts g and returns at once.
func (r *rig) start(t testing.TB, g guest) *running {
	t.Helper()
	if g.lab != nil {
		g.tap = g.lab.Tap(t)
	}
	argv, timeout := r.qemu(g)
	p := testrig.Start(t, argv...)
	return &running{p: p, timeout: timeout, started: time.Now()}
}

// qemu returns the QEMU command line that boots g, and g's timeout.
func (r *rig) qemu(g guest) ([]string, time.Duration) {
	initrd := g.initramfs
	if initrd == "" {
		initrd = r.initramfs
	}
	if g.timeout == 0 {
		g.timeout = bootTimeout
	}
	// panic=-1 and -no-reboot: a kernel panic ends QEMU at once instead of
	// hanging the test until its timeout.
	cmdline := "console=ttyS0 panic=-1 no_timer_check " + g.append
	// NBDROOT_TEST_APPEND adds kernel arguments to every boot, for debugging
	// (e.g. nbdroot.boot.log_level=debug); NBDROOT_TEST_CONSOLE=1 logs every
	// console, passing or not, and NBDROOT_TEST_CONSOLE_DIR=DIR writes each
	// to a file there (a benchmark's log is cut short).
	if extra := os.Getenv("NBDROOT_TEST_APPEND"); extra != "" {
		cmdline += " " + extra
	}
	mem := g.memMiB
	if mem == 0 {
		mem = 512
	}
	var argv []string
	if g.lab != nil {
		argv = g.lab.Exec()
	}
	argv = append(argv, "qemu-system-x86_64", "-accel", "tcg", "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(max(g.cpus, 1)))
	if g.cpuModel != "" {
		argv = append(argv, "-cpu", g.cpuModel)
	}
	argv = append(argv, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot")
	if !g.pxe {
		argv = append(argv, "-kernel", r.kernel, "-initrd", initrd, "-append", cmdline)
	}
	nic := g.nic
	if nic == "" {
		nic = "virtio-net-pci"
	}
	if g.lab == nil {
		argv = append(argv, "-netdev", "user,id=n0", "-device", nic+",netdev=n0")
	} else {
		dev := nic + ",netdev=n0,mac=" + g.mac
		if g.pxe {
			// Debian's QEMU finds no ROM of its own for a NIC: name
			// ipxe-qemu's (BIOS and EFI iPXE in one file).
			dev += ",romfile=" + ipxeROM(nic)
			argv = append(argv, "-boot", "n")
		}
		argv = append(argv, "-netdev", "tap,id=n0,ifname="+g.tap+",script=no,downscript=no", "-device", dev)
	}
	return append(argv, "-device", "virtio-rng-pci"), g.timeout
}

// ipxeROM is ipxe-qemu's ROM for a QEMU NIC model.
func ipxeROM(nic string) string {
	name := map[string]string{"e1000": "e1000", "virtio-net-pci": "virtio"}[nic]
	return "/usr/lib/ipxe/qemu/efi-" + name + ".rom"
}

// console returns what the guest printed so far.
func (g *running) console() console {
	return console(strings.ReplaceAll(g.p.Output(), "\r\n", "\n"))
}

// waitFor waits until the console matches pattern, failing the test if the
// guest exits or the boot timeout passes first.
func (g *running) waitFor(t testing.TB, pattern string) {
	t.Helper()
	re := regexp.MustCompile(pattern)
	for !re.MatchString(string(g.console())) {
		if done, err := g.p.Exited(); done {
			t.Fatalf("guest exited (%v) before the console matched %q\n--- console ---\n%s", err, pattern, g.console())
		}
		if time.Since(g.started) > g.timeout {
			t.Fatalf("console did not match %q within %v\n--- console ---\n%s", pattern, g.timeout, g.console())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wait waits for the guest to power off and returns its console.
func (g *running) wait(t testing.TB) console {
	t.Helper()
	err := g.p.Wait(g.timeout - time.Since(g.started))
	out := g.console()
	if os.Getenv("NBDROOT_TEST_CONSOLE") != "" {
		t.Logf("--- console ---\n%s", out)
	}
	if d := os.Getenv("NBDROOT_TEST_CONSOLE_DIR"); d != "" {
		if f, err := os.CreateTemp(d, "console-*.log"); err == nil {
			_, _ = f.WriteString(string(out))
			f.Close()
		}
	}
	if err != nil {
		t.Fatalf("qemu: %v\n--- console ---\n%s", err, out)
	}
	return out
}

// must fails the test unless every pattern (a regexp) matches the console.
func (c console) must(t testing.TB, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(string(c)) {
			t.Fatalf("console does not match %q\n--- console ---\n%s", p, c)
		}
	}
}

// mustNot fails the test if any pattern matches the console.
func (c console) mustNot(t testing.TB, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if m := regexp.MustCompile(p).FindString(string(c)); m != "" {
			t.Fatalf("console matches %q (%q)\n--- console ---\n%s", p, m, c)
		}
	}
}

// readBack checks the image's filesystem (replaying the journal) and returns
// the content of path inside it.
func readBack(t testing.TB, img, path string) string {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput(); err != nil {
		// Exit status 1 means "errors corrected" (the journal replay).
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck %s: %v\n%s", img, err, out)
		}
	}
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// regexpMatch reports whether pattern matches s.
func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

// mapWith returns a copy of m with k set to v.
func mapWith(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		out[mk] = mv
	}
	return out
}
