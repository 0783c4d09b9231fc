package qemutest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// urootCommands are the u-root commands beside nbdroot in the test image,
// as in `make uroot-initramfs` (UROOT_CMDS).
func urootCommands() []string {
	cmds := []string{"gosh", "ls", "cat", "ip", "dmesg", "mount", "ps"}
	for i, c := range cmds {
		cmds[i] = "github.com/u-root/u-root/cmds/core/" + c
	}
	return cmds
}

// urootImage is a u-root image with nbdroot as its init.
type urootImage struct {
	path string // uncompressed cpio
	log  string // what the builders printed
	// sizes, gzip -6 as the kernel would get them, for the report
	gzipped, rigGzipped int64
}

// buildUroot builds the u-root image once per test binary, as `make
// uroot-initramfs` does: the u-root tool at the version in go.mod (see
// tools.go); nbdroot's module tree and standard files as a base archive
// from `nbdroot mkinitramfs --base-only`; then a gobusybox of ./cmd/nbdroot
// and the u-root commands, /init linked to nbdroot, gosh as /bin/sh. The
// goshsmall tag gives gosh its plain line reader: its default editor
// queries the terminal with escape sequences that a serial console leaves
// unanswered.
var buildUroot = sync.OnceValues(func() (*urootImage, error) {
	r, err := buildRig()
	if err != nil {
		return nil, err
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(r.dir, "uroot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOROOT: %w", err)
	}
	tool, base, img := filepath.Join(dir, "u-root"), filepath.Join(dir, "base.cpio"), filepath.Join(dir, "uroot.cpio")
	var log strings.Builder
	steps := [][]string{
		{"go", "build", "-trimpath", "-o", tool, "github.com/u-root/u-root"},
		{r.nbdroot, "mkinitramfs", "--base-only", "-o", base, "--kernel", r.kernel},
		append([]string{tool, "-o", img, "-base", base, "-initcmd=nbdroot", "-defaultsh=gosh", "-go-build-tags=goshsmall", "./cmd/nbdroot"}, urootCommands()...),
	}
	for _, argv := range steps {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = repo
		// u-root runs GOROOT/bin/go; a -trimpath build does not know
		// its GOROOT.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOROOT="+strings.TrimSpace(string(goroot)))
		out, err := cmd.CombinedOutput()
		fmt.Fprintf(&log, "$ %s\n%s", strings.Join(argv, " "), out)
		if err != nil {
			return nil, fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, log.String())
		}
	}
	u := &urootImage{path: img, log: log.String()}
	if u.gzipped, err = gzipSize(img); err != nil {
		return nil, err
	}
	// The rig's initramfs is gzip already.
	fi, err := os.Stat(r.initramfs)
	if err != nil {
		return nil, err
	}
	u.rigGzipped = fi.Size()
	return u, nil
})

// gzipSize returns the size of the file at path after gzip.
func gzipSize(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return int64(buf.Len()), nil
}

// uroot returns the u-root image, failing the test if it cannot be built.
func (r *rig) uroot(t testing.TB) *urootImage {
	t.Helper()
	u, err := buildUroot()
	if err != nil {
		t.Fatalf("building the u-root image: %v", err)
	}
	return u
}

// TestUrootBoot boots the u-root image: nbdroot runs as u-root's /init
// (a link to the busybox) and boots to the NBD root unchanged, the keeper
// included, with the modules from the base archive.
func TestUrootBoot(t *testing.T) {
	r := setup(t)
	u := r.uroot(t)
	t.Logf("u-root image %d KiB gzip (nbdroot's own initramfs %d KiB gzip)", u.gzipped>>10, u.rigGzipped>>10)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	tok := token(t)
	// A failed boot powers off at once, for a quick failure with the reason
	// on the console, rather than waiting in the shell.
	c := r.boot(t, guest{initramfs: u.path, append: fmt.Sprintf(
		"nbdroot=10.0.2.2:%d/rootfs rw testinit.token=%s nbdroot.boot.on_failure=poweroff nbdroot.boot.failure_delay=0s", srv.Port, tok)})
	rootReached(t, c, "rw")
	c.must(t, `TESTINIT: root=/dev/nbd0 fstype=ext4`, `TESTINIT: write=ok`,
		`nbdroot: modules: `, `nbdroot: network: ens2 10\.0\.2\.15/24 from DHCP`)
	c.mustNot(t, `Failed to run command`, `command is not present in busybox`)
	srv.Stop()
	if got := readBack(t, img, "/nbdroot-test/written"); got != tok {
		t.Fatalf("image holds %q, want %q: the guest's write was lost", got, tok)
	}
}

// TestUrootShellOnFailure: in the u-root image a failed boot with
// on_failure = shell drops into gosh (u-root's /bin/sh), where nbdroot is
// a busybox command on the PATH: `nbdroot probe` reaches the server.
// Leaving the shell reboots the machine.
func TestUrootShellOnFailure(t *testing.T) {
	r := setup(t)
	u := r.uroot(t)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	g := r.startTerminal(t, guest{initramfs: u.path, append: fmt.Sprintf(
		"%s nbdroot=10.0.2.2:%d/nosuch nbdroot.boot.on_failure=shell nbdroot.boot.failure_delay=0s", staticIP, srv.Port)})
	g.expect(t, `nbdroot: boot failed: connect: .*nosuch.*NBD_REP_ERR_UNKNOWN`)
	g.expect(t, `nbdroot: boot failed: starting /bin/sh`)
	g.expect(t, goshPrompt)

	g.send(t, fmt.Sprintf("nbdroot probe 10.0.2.2:%d/rootfs; echo probe-status=$?", srv.Port))
	g.expect(t, `export:\s+rootfs`)
	g.expect(t, probeSize(t, img))
	g.expect(t, `probe-status=0`)
	g.expect(t, goshPrompt)

	g.send(t, "exit")
	c := g.wait(t)
	c.must(t, `nbdroot: boot failed: rebooting`, `reboot: Restarting system`)
	c.mustNot(t, `Kernel panic`, `Attempted to kill init`, `TESTINIT:`)
}

// goshPrompt is the prompt of gosh built with goshsmall.
const goshPrompt = `\$ `
