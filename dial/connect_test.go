package dial_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/negotiate"
)

// twoServers is a spec listing two real servers of the same 1 MiB export.
func twoServers(t *testing.T, order config.Order) (config.Spec, [2]*testrig.Server) {
	a, b := testrig.Nbdkit(t, "memory", "1M"), testrig.Nbdkit(t, "memory", "1M")
	spec := config.Defaults()
	for _, s := range []*testrig.Server{a, b} {
		tgt, err := config.ParseTarget(s.Addr)
		if err != nil {
			t.Fatal(err)
		}
		spec.Server.Endpoints = append(spec.Server.Endpoints, tgt.Server.Endpoints...)
	}
	spec.Server.Order = order
	return spec, [2]*testrig.Server{a, b}
}

// TestSpread: with server.order = "spread", eight machines (MAC
// addresses as a lab's dnsmasq sees them) start at a server picked from
// their identity and so spread over both servers, each machine always on
// the same one; with "listed" they all start at the first.
func TestSpread(t *testing.T) {
	if testing.Short() {
		t.Skip("real servers are skipped with -short")
	}
	for _, tc := range []struct {
		order config.Order
		want  [2]int
	}{{config.OrderSpread, [2]int{4, 4}}, {config.OrderListed, [2]int{8, 0}}} {
		spec, srv := twoServers(t, tc.order)
		d, err := dial.NewDialer(spec)
		if err != nil {
			t.Fatal(err)
		}
		log := bootlog.New(&bytes.Buffer{}, time.Now())
		var got [2]int
		for i := range 8 {
			mac, _ := net.ParseMAC(fmt.Sprintf("52:54:00:77:00:%02x", 0x10+i))
			for range 2 { // the same machine twice: the same server
				_, conn, ep, err := d.WithIdentity(mac).Connect(context.Background(), log)
				if err != nil {
					t.Fatal(err)
				}
				negotiate.Disconnect(conn)
				got[slices.IndexFunc(srv[:], func(s *testrig.Server) bool { return s.Addr == ep.Server() })]++
			}
		}
		got[0], got[1] = got[0]/2, got[1]/2
		if got != tc.want {
			t.Errorf("order %s: machines per server %v, want %v", tc.order, got, tc.want)
		}
	}
}

// TestBootStorm: 200 machines connect at once through the boot's own
// Connect path against one nbdkit, as a lab does after a power cut. All
// must succeed; the spread of connect times and the retries are reported.
func TestBootStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("real servers are skipped with -short")
	}
	const n = 200
	srv := testrig.Nbdkit(t, "memory", "1M")
	tgt, err := config.ParseTarget(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	spec := config.Defaults()
	spec.Server.Endpoints = tgt.Server.Endpoints
	spec.Server.Deadline = time.Minute
	d, err := dial.NewDialer(spec)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		times []time.Duration
		fails []error
		conns []net.Conn
		logs  bytes.Buffer
	)
	log := bootlog.New(&lockedWriter{w: &logs}, time.Now())
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			_, conn, _, err := d.Connect(context.Background(), log)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails = append(fails, err)
				return
			}
			times = append(times, time.Since(t0))
			conns = append(conns, conn)
		})
	}
	close(start)
	wg.Wait()
	for _, c := range conns {
		negotiate.Disconnect(c)
	}
	retries := strings.Count(logs.String(), "connect: attempt ")
	if len(fails) > 0 {
		t.Fatalf("%d of %d connects failed, first: %v", len(fails), n, fails[0])
	}
	slices.Sort(times)
	t.Logf("%d connects: min %v, median %v, p95 %v, max %v; %d retries", n, times[0].Round(time.Millisecond),
		times[n/2].Round(time.Millisecond), times[n*95/100].Round(time.Millisecond), times[n-1].Round(time.Millisecond), retries)
}

// lockedWriter serialises writes from many goroutines' log lines.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
