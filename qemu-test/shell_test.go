package qemutest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// terminal is a guest whose serial console the test can type into: QEMU's
// -serial stdio reads the guest's console input from a pipe. The rig's
// start gives QEMU no stdin, hence this runner.
type terminal struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	out     *syncBuffer
	done    chan struct{} // closed when QEMU has exited
	err     error         // QEMU's exit, valid after done
	timeout time.Duration
	started time.Time
	seen    int // console offset up to which expect has matched
}

// syncBuffer is a bytes.Buffer for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startTerminal starts g like rig.start does, with the console's input
// open for send. QEMU is killed when the test ends.
func (r *rig) startTerminal(t testing.TB, g guest) *terminal {
	t.Helper()
	argv, timeout := r.qemu(g)
	cmd := exec.Command(argv[0], argv[1:]...)
	term := &terminal{out: &syncBuffer{}, done: make(chan struct{}), timeout: timeout}
	cmd.Stdout, cmd.Stderr = term.out, term.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("qemu: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	term.cmd, term.stdin, term.started = cmd, stdin, time.Now()
	go func() {
		term.err = cmd.Wait()
		close(term.done)
	}()
	t.Cleanup(func() {
		select {
		case <-term.done:
		default:
			_ = cmd.Process.Kill()
			<-term.done
		}
		if t.Failed() || os.Getenv("NBDROOT_TEST_CONSOLE") != "" {
			t.Logf("--- console ---\n%s", term.console())
		}
	})
	return term
}

// console returns what the guest printed so far.
func (g *terminal) console() console {
	return console(strings.ReplaceAll(g.out.String(), "\r\n", "\n"))
}

// expect waits until the console, after what earlier expects matched,
// matches pattern, and returns the match. It fails the test if QEMU exits
// or the guest's timeout passes first.
func (g *terminal) expect(t testing.TB, pattern string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	for {
		c := string(g.console())
		if loc := re.FindStringIndex(c[g.seen:]); loc != nil {
			m := c[g.seen+loc[0] : g.seen+loc[1]]
			g.seen += loc[1]
			return m
		}
		select {
		case <-g.done:
			t.Fatalf("qemu exited (%v) before the console matched %q", g.err, pattern)
		default:
		}
		if time.Since(g.started) > g.timeout {
			t.Fatalf("console did not match %q within %v", pattern, g.timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// send types line and a newline on the console.
func (g *terminal) send(t testing.TB, line string) {
	t.Helper()
	if _, err := io.WriteString(g.stdin, line+"\n"); err != nil {
		t.Fatalf("typing %q: %v", line, err)
	}
}

// wait waits for QEMU to exit by itself (the guest powered off, or
// rebooted under -no-reboot) and returns the console.
func (g *terminal) wait(t testing.TB) console {
	t.Helper()
	select {
	case <-g.done:
	case <-time.After(g.timeout - time.Since(g.started)):
		t.Fatalf("qemu still running after %v", g.timeout)
	}
	if g.err != nil {
		t.Fatalf("qemu: %v", g.err)
	}
	return g.console()
}

// shellInitramfs builds the rig's initramfs with the static shell sh as
// the rescue shell.
func (r *rig) shellInitramfs(t testing.TB, sh string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "initramfs-shell.img")
	out, err := exec.Command(r.nbdroot, "mkinitramfs", "-o", img, "--binary", r.nbdroot, "--kernel", r.kernel, "--shell", sh).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdroot mkinitramfs --shell %s: %v\n%s", sh, err, out)
	}
	if !regexpMatch(`shell     \S+ \([0-9.]+ [KM]iB\) as /bin/busybox; [0-9]+ links`, string(out)) {
		t.Fatalf("mkinitramfs did not report the shell:\n%s", out)
	}
	return img
}

// probeSize is what `nbdroot probe` prints for the export img.
func probeSize(t testing.TB, img string) string {
	t.Helper()
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`size:\s+%d \(`, fi.Size())
}

// failToBusybox boots nbdroot's own initramfs with BusyBox as the rescue
// shell against a server that lacks the export asked for, so that the boot
// fails into the shell; it returns the guest at the failure, the root
// image and the server (which does have "rootfs").
func failToBusybox(t *testing.T) (*terminal, string, *testrig.Server) {
	t.Helper()
	r := setup(t)
	busybox := testrig.Tool(t, "busybox")
	initrd := r.shellInitramfs(t, busybox)
	img := r.rootImage(t)
	srv := testrig.QemuNBD(t, img, "rootfs")
	g := r.startTerminal(t, guest{initramfs: initrd, append: fmt.Sprintf(
		"%s nbdroot=10.0.2.2:%d/nosuch nbdroot.boot.on_failure=shell nbdroot.boot.failure_delay=0s", staticIP, srv.Port)})
	g.expect(t, `nbdroot: boot failed: connect: .*nosuch.*NBD_REP_ERR_UNKNOWN`)
	return g, img, srv
}

// TestShellOnFailure: nbdroot's own initramfs with BusyBox as its rescue
// shell. The export does not exist, so the boot fails; with on_failure =
// shell the console shows the failure, then the shell, where nbdroot's
// subcommands are at hand: `nbdroot probe` reaches the server over the
// network the boot brought up. Leaving the shell reboots the machine
// (QEMU exits under -no-reboot).
func TestShellOnFailure(t *testing.T) {
	g, img, srv := failToBusybox(t)
	g.expect(t, `nbdroot: boot failed: starting /bin/sh`)
	g.expect(t, `\(nbdroot\) # `)

	g.send(t, fmt.Sprintf("nbdroot probe 10.0.2.2:%d/rootfs; echo probe-status=$?", srv.Port))
	g.expect(t, `export:\s+rootfs`)
	g.expect(t, probeSize(t, img))
	g.expect(t, `probe-status=0`)
	g.expect(t, `\(nbdroot\) # `)

	// The applet links and the kernel's view of the failed boot.
	g.send(t, "ls -l /bin/nbdroot; dmesg | grep -c 'nbdroot: boot failed'")
	g.expect(t, `/bin/nbdroot -> \.\./init`)
	g.expect(t, `\n[1-9][0-9]*\n`)
	g.expect(t, `\(nbdroot\) # `)

	g.send(t, "exit")
	c := g.wait(t)
	c.must(t, `nbdroot: boot failed: rebooting`, `reboot: Restarting system`)
	c.mustNot(t, `Kernel panic`, `Attempted to kill init`, `TESTINIT:`)
}

// TestShellRetry: the boot fails (wrong export), the operator fixes the
// spec from the rescue shell with `nbdroot boot --retry --cmdline ...`, and
// PID 1 ends the shell and boots on from where it failed (the network stays
// up) to the root's init.
func TestShellRetry(t *testing.T) {
	g, _, srv := failToBusybox(t)
	g.expect(t, `\(nbdroot\) # `)
	g.send(t, fmt.Sprintf(`nbdroot boot --retry --cmdline "%s nbdroot=10.0.2.2:%d/rootfs rw"`, staticIP, srv.Port))
	g.expect(t, `nbdroot: retry: booting again`)
	c := g.wait(t)
	rootReachedAfterFailures(t, c, "rw")
	c.must(t, `TESTINIT: root=/dev/nbd0 fstype=ext4 opts=rw`, `TESTINIT: write=ok`)
	// The second attempt kept the network of the first.
	if n := len(regexp.MustCompile(`(?m)^(\[[ 0-9.]+\] )?nbdroot: network: ens2 `).FindAllString(string(c), -1)); n != 1 {
		t.Fatalf("the network was configured %d times, want once\n--- console ---\n%s", n, c)
	}
}
