package qemutest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// guestPackages are the packages whose TestGuest* tests need a real kernel.
// A package is run only if it has test files.
var guestPackages = []string{"netlink", "ioctl", "keeper"}

// guestTimeout bounds the whole guest run: boot, tests, power-off.
const guestTimeout = 3 * time.Minute

// TestGuest runs the kernel tests of guestPackages inside the distribution
// kernel: it compiles each package's test binary, packs the binaries into an
// initramfs whose /init is ./guest, boots it, and checks that every TestGuest*
// test of every binary passed. NBDROOT_GUEST_RUN overrides the -test.run
// pattern given to the binaries (default ^TestGuest).
func TestGuest(t *testing.T) {
	r := setup(t)
	dir := t.TempDir()
	run := os.Getenv("NBDROOT_GUEST_RUN")
	if run == "" {
		run = "^TestGuest"
	}
	if strings.ContainsAny(run, " \t\n\"") {
		t.Fatalf("NBDROOT_GUEST_RUN %q: no spaces or quotes (it travels on the kernel command line)", run)
	}

	init := filepath.Join(dir, "init")
	goBuild(t, "build", "-trimpath", "-ldflags=-s -w", "-o", init, "./guest")
	args := []string{"mkinitramfs", "-o", filepath.Join(dir, "guest.img"), "--binary", init, "--kernel", r.kernel}
	expect := map[string][]string{} // binary name → tests it must pass
	for _, pkg := range guestPackages {
		if tf, _ := filepath.Glob(filepath.Join("..", pkg, "*_test.go")); len(tf) == 0 {
			continue
		}
		bin := filepath.Join(dir, pkg+".test")
		goBuild(t, "test", "-c", "-o", bin, "../"+pkg)
		out, err := exec.Command(bin, "-test.list", run).Output()
		if err != nil {
			t.Fatalf("%s -test.list: %v", bin, err)
		}
		names := strings.Fields(string(out))
		if len(names) == 0 {
			continue
		}
		expect[pkg+".test"] = names
		args = append(args, "--file", bin+":/guest/"+pkg+".test")
	}
	if len(expect) == 0 {
		t.Fatalf("no package in %v has tests matching %q", guestPackages, run)
	}
	if out, err := exec.Command(r.nbdroot, args...).CombinedOutput(); err != nil {
		t.Fatalf("nbdroot mkinitramfs: %v\n%s", err, out)
	}

	t0 := time.Now()
	c := r.boot(t, guest{
		initramfs: filepath.Join(dir, "guest.img"),
		append:    "quiet guest.run=" + run,
		timeout:   guestTimeout,
	})
	t.Logf("guest ran for %v\n--- console ---\n%s", time.Since(t0).Round(100*time.Millisecond), c)
	c.must(t, `GUEST: done`)
	for bin, names := range expect {
		c.must(t, regexp.QuoteMeta("GUEST: "+bin+" exit=0 "))
		for _, name := range names {
			c.must(t, `(?m)--- PASS: `+regexp.QuoteMeta(name)+` \(`)
		}
	}
	c.mustNot(t, `--- FAIL`, `--- SKIP: TestGuest`, `panic: `, `has an invalid length`)
}

// goBuild runs `go build` or `go test -c` for the guest: static, no cgo.
func goBuild(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
