package network

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/internal/testrig"
)

// The lab: two network namespaces joined by a veth pair. The server side
// (srv0, 10.77.0.1/24) runs dnsmasq; the client side (cl0, MAC labMAC)
// starts unconfigured. A test runs its client part in a child process
// started under `ip netns exec` (and `unshare --uts`, so that setting the
// hostname is harmless): the child is this test binary again, running the
// same test with labChildEnv set.
const (
	labChildEnv = "NBDROOT_NETWORK_LAB_CHILD" // set in the child: the directory it reports into
	labServer   = "10.77.0.1"
	labMAC      = "52:54:00:77:00:02"
	labClient   = "cl0"
	labSrvLink  = "srv0"
)

// lab is one test's namespaces and dnsmasq.
type lab struct {
	srv, cli string // namespace names
	dir      string
	leases   string // dnsmasq's lease file
	logFile  string // dnsmasq's log
}

// inLabChild reports whether this process is a lab child, running a
// test's client part.
func inLabChild() bool { return os.Getenv(labChildEnv) != "" }

// labReport is the child's directory for reporting to the parent.
func labReport() string { return os.Getenv(labChildEnv) }

// needLab skips the test unless it can build a lab (root, ip, dnsmasq,
// unshare), or fails it when $CI is set.
func needLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("network lab: needs root to create network namespaces")
		}
		t.Skip("network lab: needs root to create network namespaces")
	}
	testrig.Need(t, "ip", "ss", "dnsmasq", "unshare")
}

// run runs cmd, failing the test with its output on error.
func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLab creates the namespaces and the veth pair and starts dnsmasq with
// the lease time and extra arguments (no dnsmasq for an empty lease time).
// Everything is removed when the test ends, failed or not.
func newLab(t *testing.T, leaseTime string, dnsmasqArgs ...string) *lab {
	t.Helper()
	needLab(t)
	base := fmt.Sprintf("nbdroot-test-%d-%s", os.Getpid(), strings.ToLower(strings.NewReplacer("Test", "", "/", "-").Replace(t.Name())))
	if len(base) > 40 {
		base = base[:40]
	}
	l := &lab{srv: base + "-s", cli: base + "-c", dir: t.TempDir()}
	l.leases = filepath.Join(l.dir, "leases")
	l.logFile = filepath.Join(l.dir, "dnsmasq.log")
	for _, ns := range []string{l.srv, l.cli} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "link", "add", labSrvLink, "netns", l.srv, "type", "veth", "peer", "name", labClient, "netns", l.cli, "address", labMAC)
	run(t, "ip", "-n", l.srv, "addr", "add", labServer+"/24", "dev", labSrvLink)
	run(t, "ip", "-n", l.srv, "link", "set", labSrvLink, "up")
	run(t, "ip", "-n", l.srv, "link", "set", "lo", "up")
	if leaseTime == "" {
		return l
	}
	args := []string{"netns", "exec", l.srv, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface=" + labSrvLink, "--bind-interfaces", "--dhcp-authoritative",
		"--dhcp-range=10.77.0.50,10.77.0.99," + leaseTime,
		"--dhcp-leasefile=" + l.leases, "--log-dhcp", "--log-facility=" + l.logFile, "--pid-file=" + filepath.Join(l.dir, "pid")}
	cmd := exec.Command("ip", append(args, dnsmasqArgs...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(l.logFile)
			t.Logf("dnsmasq output:\n%s\n--- log ---\n%s", out.String(), b)
		}
	})
	// dnsmasq is ready when its DHCP socket is bound.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(run(t, "ip", "netns", "exec", l.srv, "ss", "-uln"), ":67 ") {
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq did not bind port 67 within 5s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return l
}

// child runs test's client part in the client namespace and returns the
// directory it reported into. The child's failure fails the test.
func (l *lab) child(t *testing.T, timeout time.Duration, env ...string) string {
	t.Helper()
	report := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.cli, "unshare", "--uts",
		os.Args[0], "-test.run="+runPattern(t.Name()), "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), labChildEnv+"="+report), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client part in namespace %s: %v\n%s", l.cli, err, out)
	}
	t.Logf("client part:\n%s", out)
	return report
}

// dnsmasqLog is what dnsmasq logged so far.
func (l *lab) dnsmasqLog(t *testing.T) string {
	b, err := os.ReadFile(l.logFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testLog is a bootlog.Logger writing to the test's output, with debug on.
func testLog(t *testing.T) *bootlog.Logger {
	l := bootlog.New(testWriter{t}, time.Now())
	l.SetDebug(true)
	return l
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runPattern is the -test.run pattern that selects exactly the test named
// name, subtests included.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}
