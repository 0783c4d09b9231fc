package testrig

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// A Lab is a diskless lab on one machine: a network namespace of its own
// holding a bridge with the lab's server address, one tap per guest on the
// bridge, dnsmasq as DHCP and TFTP server, and NBD servers (InLab) listening
// on the server address. Every address lives inside the namespace and
// nothing is routed out of it. The test's cleanup stops the lab's processes
// and removes the namespace, also when the test fails.
//
// Guests are QEMU processes started with Exec's prefix and
// `-netdev tap,ifname=TAP,script=no,downscript=no` on a Tap.
type Lab struct {
	// Name is the network namespace's name.
	Name string
	// Bridge is the bridge's name inside the namespace.
	Bridge string
	// Dir holds the lab's files: TFTP root, dnsmasq configuration, leases.
	Dir string

	t     testing.TB
	mu    sync.Mutex
	taps  int
	ports int
}

// The lab's network: the server (bridge) address and the DHCP pool.
var (
	labServer = netip.MustParsePrefix("10.77.0.1/24")
)

// labPrefix starts the name of every namespace NewLab makes; stale ones
// (their test process gone) are removed by the next NewLab.
const labPrefix = "nbdroot-lab-"

// LabPort is the first NBD port servers in a lab listen on (the NBD
// default); each further server gets the next one.
const LabPort = 10809

// NewLab creates a lab. It needs root, ip(8), /dev/net/tun and dnsmasq:
// without them the test is skipped with the reason, or fails in CI.
func NewLab(t testing.TB) *Lab {
	t.Helper()
	Need(t, "ip", "dnsmasq")
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "a lab network needs root (network namespaces, taps, a bridge)"
	default:
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			why = "a lab network needs /dev/net/tun: " + err.Error()
		}
	}
	if why != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("testrig: %s", why)
		}
		t.Skipf("testrig: %s", why)
	}
	removeStaleLabs()
	l := &Lab{
		Name:   fmt.Sprintf("%s%d-%d", labPrefix, os.Getpid(), time.Now().UnixNano()%1e6),
		Bridge: "br0",
		Dir:    t.TempDir(),
		t:      t,
	}
	if out, err := exec.Command("ip", "netns", "add", l.Name).CombinedOutput(); err != nil {
		t.Fatalf("testrig: ip netns add %s: %v\n%s", l.Name, err, out)
	}
	t.Cleanup(l.remove)
	l.run(t, "ip", "link", "set", "lo", "up")
	l.run(t, "ip", "link", "add", l.Bridge, "type", "bridge")
	l.run(t, "ip", "addr", "add", labServer.String(), "dev", l.Bridge)
	l.run(t, "ip", "link", "set", l.Bridge, "up")
	return l
}

// remove deletes the namespace. Processes started in it were stopped by
// their own cleanups, which ran before this one.
func (l *Lab) remove() {
	if out, err := exec.Command("ip", "netns", "del", l.Name).CombinedOutput(); err != nil {
		l.t.Errorf("testrig: ip netns del %s: %v\n%s", l.Name, err, out)
	}
}

// removeStaleLabs deletes lab namespaces whose test process is gone (a test
// binary killed before its cleanups ran).
func removeStaleLabs() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, labPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}

func processAlive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// Exec is the command prefix that runs a program inside the lab's
// namespace ("ip netns exec NAME"; ip execs the program, so its pid is the
// program's).
func (l *Lab) Exec(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", l.Name}, argv...)
}

// run runs argv inside the namespace and fails the test if it fails.
func (l *Lab) run(t testing.TB, argv ...string) {
	t.Helper()
	full := l.Exec(argv...)
	if out, err := exec.Command(full[0], full[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("testrig: lab %s: %s: %v\n%s", l.Name, strings.Join(argv, " "), err, out)
	}
}

// Start starts argv inside the lab's namespace (see Start).
func (l *Lab) Start(t testing.TB, argv ...string) *Process {
	t.Helper()
	return Start(t, l.Exec(argv...)...)
}

// ServerAddr is the lab's server address (the bridge's), where dnsmasq and
// the NBD servers listen.
func (l *Lab) ServerAddr() netip.Addr { return labServer.Addr() }

// nextPort returns the port for the lab's next NBD server.
func (l *Lab) nextPort() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := LabPort + l.ports
	l.ports++
	return p
}

// Tap creates the next tap device on the lab's bridge, up, and returns its
// name, for QEMU's `-netdev tap,ifname=NAME,script=no,downscript=no`.
func (l *Lab) Tap(t testing.TB) string {
	t.Helper()
	l.mu.Lock()
	name := "tap" + strconv.Itoa(l.taps)
	l.taps++
	l.mu.Unlock()
	l.run(t, "ip", "tuntap", "add", name, "mode", "tap")
	l.run(t, "ip", "link", "set", name, "master", l.Bridge)
	l.run(t, "ip", "link", "set", name, "up")
	return name
}

// MAC is guest i's MAC address: distinct per guest, in QEMU's 52:54:00 range.
func MAC(i int) string { return fmt.Sprintf("52:54:00:77:00:%02x", i+0x10) }

// Nbdkit runs nbdkit in the lab, listening on the server address (see the
// package-level Nbdkit for args).
func (l *Lab) Nbdkit(t testing.TB, args ...string) *Server {
	t.Helper()
	return nbdkit(t, options{lab: l}, args)
}

// Dial connects to addr from inside the lab's namespace.
func (l *Lab) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	// The socket is made in the namespace of the thread that creates it: a
	// locked thread enters the lab, dials, and goes back. It must not exit
	// locked: the kernel would end the thread, and a child a test process
	// forked from that thread earlier dies with it (Pdeathsig).
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromName(l.Name)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with this goroutine
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// DnsmasqConfig is one dnsmasq configuration for a lab: the text of a
// configuration file (docs/lab/dnsmasq.conf) with lines replaced or added.
type DnsmasqConfig struct {
	// Base is the configuration file to start from.
	Base string
	// Set replaces the value of every line "KEY=…" for each key, or adds
	// "KEY=VALUE" when the base has none. A key mapped to several values
	// (dhcp-option) is given with Add instead.
	Set map[string]string
	// Add appends lines.
	Add []string
}

// Dnsmasq writes the configuration (its tftp-root and dhcp-leasefile set to
// the lab's directory, TFTPRoot and Leases) and runs dnsmasq in the
// foreground in the lab, logging to its output; it returns once dnsmasq
// says it started.
func (l *Lab) Dnsmasq(t testing.TB, cfg DnsmasqConfig) *Process {
	t.Helper()
	base, err := os.ReadFile(cfg.Base)
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	set := map[string]string{"tftp-root": l.TFTPRoot(), "dhcp-leasefile": l.Leases()}
	for k, v := range cfg.Set {
		set[k] = v
	}
	if err := os.MkdirAll(l.TFTPRoot(), 0o755); err != nil {
		t.Fatal(err)
	}
	text := configWith(string(base), set, cfg.Add)
	conf := filepath.Join(l.Dir, "dnsmasq.conf")
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p := l.Start(t, "dnsmasq", "--no-daemon", "--conf-file="+conf)
	deadline := time.Now().Add(ReadyTimeout)
	for !strings.Contains(p.Output(), "DHCP, sockets bound") {
		if done, err := p.Exited(); done {
			t.Fatalf("testrig: dnsmasq exited (%v)\n%s\nconfiguration:\n%s", err, p.Output(), text)
		}
		if time.Now().After(deadline) {
			t.Fatalf("testrig: dnsmasq not ready after %v\n%s", ReadyTimeout, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// TFTPRoot is the directory dnsmasq serves over TFTP.
func (l *Lab) TFTPRoot() string { return filepath.Join(l.Dir, "tftp") }

// Leases is dnsmasq's lease file.
func (l *Lab) Leases() string { return filepath.Join(l.Dir, "dnsmasq.leases") }

// configWith returns the key=value configuration text with set's keys
// replaced (every line of that key) or appended, and add appended.
func configWith(text string, set map[string]string, add []string) string {
	var b strings.Builder
	done := map[string]bool{}
	s := bufio.NewScanner(strings.NewReader(text))
	for s.Scan() {
		line := s.Text()
		key, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		if v, ok := set[key]; ok && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			if !done[key] {
				fmt.Fprintf(&b, "%s=%s\n", key, v)
				done[key] = true
			}
			continue
		}
		b.WriteString(line + "\n")
	}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		if !done[k] {
			fmt.Fprintf(&b, "%s=%s\n", k, set[k])
		}
	}
	for _, line := range add {
		b.WriteString(line + "\n")
	}
	return b.String()
}

// LeaseOf returns the address dnsmasq's lease file gives mac, or an error
// when it has none.
func (l *Lab) LeaseOf(mac string) (netip.Addr, error) {
	le, err := l.Lease(mac)
	return le.Addr, err
}

// A DHCPLease is one line of dnsmasq's lease file.
type DHCPLease struct {
	Addr    netip.Addr
	Expires time.Time
}

// Lease returns mac's lease in dnsmasq's lease file, or an error when it
// has none.
func (l *Lab) Lease(mac string) (DHCPLease, error) {
	b, err := os.ReadFile(l.Leases())
	if err != nil {
		return DHCPLease{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line) // EXPIRY MAC IP HOSTNAME CLIENT-ID
		if len(f) < 3 || !strings.EqualFold(f[1], mac) {
			continue
		}
		exp, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return DHCPLease{}, fmt.Errorf("dnsmasq lease file: expiry %q: %w", f[0], err)
		}
		addr, err := netip.ParseAddr(f[2])
		if err != nil {
			return DHCPLease{}, fmt.Errorf("dnsmasq lease file: address %q: %w", f[2], err)
		}
		return DHCPLease{Addr: addr, Expires: time.Unix(exp, 0)}, nil
	}
	return DHCPLease{}, errors.New("no lease for " + mac)
}

// Dial connects to addr from the host's own namespace.
func Dial(addr string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, timeout)
}

// combined runs argv and returns its combined output.
func combined(argv ...string) (string, error) {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return string(out), err
}
