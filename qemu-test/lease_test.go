package qemutest

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// The lease tests: a lab whose dnsmasq gives 2-minute leases (its minimum),
// and a guest that writes and fsyncs for 6 minutes.
const (
	leaseTime = 2 * time.Minute
	soakTime  = 6 * time.Minute
	// soakIntervalMs paces the writers (one block per 50 ms at most): a
	// 6-minute soak stays within the stress file's 8192 blocks.
	soakIntervalMs = 50
	// minRenewals is the fewest renewals a 6-minute soak may see: the
	// keeper renews at T1, half the lease, so about six; the margin is for
	// the boot's share of the six minutes.
	minRenewals = 4
)

// leaseLab starts a lab whose dnsmasq (docs/lab/dnsmasq.conf) gives
// leaseTime leases.
func leaseLab(t *testing.T) (*testrig.Lab, *testrig.Process) {
	t.Helper()
	lab := testrig.NewLab(t)
	dns := lab.Dnsmasq(t, testrig.DnsmasqConfig{
		Base: filepath.Join(labDocs, "dnsmasq.conf"),
		Set:  map[string]string{"dhcp-range": fmt.Sprintf("10.77.0.50,10.77.0.99,255.255.255.0,%dm", int(leaseTime.Minutes()))},
	})
	return lab, dns
}

// leaseWatch samples dnsmasq's lease file for one MAC once a second while a
// guest runs: the address never lapses when every sample finds the lease
// unexpired, and each new expiry time is a renewal.
type leaseWatch struct {
	lab  *testrig.Lab
	mac  string
	stop chan struct{}
	done sync.WaitGroup
	once sync.Once

	mu       sync.Mutex
	samples  int
	addrs    map[string]bool
	expiries []time.Time // each distinct expiry, in order
	lapsed   []string    // samples that found no lease, or an expired one
}

// watchLease starts sampling mac's lease in lab.
func watchLease(lab *testrig.Lab, mac string) *leaseWatch {
	w := &leaseWatch{lab: lab, mac: mac, stop: make(chan struct{}), addrs: map[string]bool{}}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				w.sample()
			}
		}
	}()
	return w
}

// sample reads the lease once. Before the first lease, there is nothing to
// lapse.
func (w *leaseWatch) sample() {
	le, err := w.lab.Lease(w.mac)
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil && len(w.expiries) == 0:
		return
	case err != nil:
		w.lapsed = append(w.lapsed, fmt.Sprintf("%s: %v", now.Format(time.TimeOnly), err))
		return
	case !le.Expires.After(now):
		w.lapsed = append(w.lapsed, fmt.Sprintf("%s: the lease of %s expired at %s", now.Format(time.TimeOnly), le.Addr, le.Expires.Format(time.TimeOnly)))
	}
	w.samples++
	w.addrs[le.Addr.String()] = true
	if n := len(w.expiries); n == 0 || !le.Expires.Equal(w.expiries[n-1]) {
		w.expiries = append(w.expiries, le.Expires)
	}
}

// end stops sampling; a second call does nothing.
func (w *leaseWatch) end() {
	w.once.Do(func() {
		close(w.stop)
		w.done.Wait()
	})
}

// check ends the watch and asserts that the lease never lapsed, kept one
// address, and was renewed at least minRenewals times.
func (w *leaseWatch) check(t *testing.T) {
	t.Helper()
	w.end()
	w.mu.Lock()
	defer w.mu.Unlock()
	var exp []string
	for _, e := range w.expiries {
		exp = append(exp, e.Format(time.TimeOnly))
	}
	t.Logf("dnsmasq's lease file, %d samples: expiry times %s", w.samples, strings.Join(exp, " "))
	if len(w.lapsed) > 0 {
		t.Errorf("the lease lapsed:\n%s", strings.Join(w.lapsed, "\n"))
	}
	if len(w.addrs) != 1 {
		t.Errorf("the lease file gave %s %d addresses over the run, want 1: %v", w.mac, len(w.addrs), w.addrs)
	}
	if renewals := len(w.expiries) - 1; renewals < minRenewals {
		t.Errorf("dnsmasq's lease file shows %d renewals in %v with %v leases, want at least %d", renewals, soakTime, leaseTime, minRenewals)
	}
}

// keeperRenewals counts the keeper's renewal lines on a console.
var keeperRenewals = regexp.MustCompile(`nbdroot: network: \S+: lease of \S+ (renewed|rebound) by`)

// TestLabLease keeps a guest up for 6 minutes under a write+fsync load in
// a lab with 2-minute leases: once with testinit as the root's init, where
// nothing but the keeper renews the lease, and once with the Debian root
// running ifupdown (its dhclient renews too). The address never lapses in
// dnsmasq's lease file, which shows the renewals, and no write fails. The
// two run side by side.
func TestLabLease(t *testing.T) {
	t.Run("keeper", func(t *testing.T) {
		t.Parallel()
		r := setup(t)
		lab, _ := leaseLab(t)
		img := r.rootImage(t)
		srv := testrig.QemuNBD(t, img, "rootfs", testrig.InLab(lab))
		tok := token(t)
		w := watchLease(lab, testrig.MAC(0))
		g := r.start(t, guest{lab: lab, mac: testrig.MAC(0), timeout: soakTime + bootTimeout, append: fmt.Sprintf(
			"nbdroot=dhcp ip=dhcp rw testinit.mode=stress testinit.stress_seconds=%d testinit.stress_interval_ms=%d testinit.token=%s",
			int(soakTime.Seconds()), soakIntervalMs, strings.ReplaceAll(tok, "/", "-"))})
		c := g.wait(t)
		w.check(t)
		rootReached(t, c, "rw")
		n := len(keeperRenewals.FindAllString(string(c), -1))
		t.Logf("the keeper logged %d renewals", n)
		if n < minRenewals {
			t.Errorf("the keeper logged %d renewals, want at least %d; its network lines:\n%s", n, minRenewals, c.grep(`nbdroot: network`))
		}
		run := parseStress(t, c)
		t.Logf("writer: blocks=%d errors=%d verify=%s", run.blocks, run.errs, run.verify)
		if run.errs != 0 || run.verify != "ok" {
			t.Errorf("the writer: errors=%d verify=%s, want errors=0 verify=ok", run.errs, run.verify)
		}
		srv.Stop()
		checkStressImage(t, readBack(t, img, stressPath), strings.ReplaceAll(tok, "/", "-"), run)
	})
	t.Run("debian-ifupdown", func(t *testing.T) {
		t.Parallel()
		lab, _ := leaseLab(t)
		w := watchLease(lab, testrig.MAC(0))
		// The watch ends with the soak: at power-off, ifupdown's ifdown
		// releases the lease (dnsmasq drops it from its file), as it should.
		distroBoot(t, distroCase{name: "ifupdown/lease", stack: testrig.NetIfupdown, action: "poweroff", soak: soakTime, lab: lab, requested: w.end})
		w.check(t)
	})
}
