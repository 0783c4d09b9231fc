package testrig

import (
	"strings"
	"testing"
	"time"
)

func TestConfigWith(t *testing.T) {
	base := "# comment\nport=0\n#dhcp-range=commented\ndhcp-range=a,b,12h\ndhcp-option=x\ndhcp-range=c,d,1h\n"
	got := configWith(base, map[string]string{"dhcp-range": "e,f,2m", "tftp-root": "/t", "enable-tftp": ""}, []string{"log-dhcp"})
	want := "# comment\nport=0\n#dhcp-range=commented\ndhcp-range=e,f,2m\ndhcp-option=x\nenable-tftp=\ntftp-root=/t\nlog-dhcp\n"
	if got != want {
		t.Errorf("configWith =\n%s\nwant\n%s", got, want)
	}
}

// TestLab builds a lab and checks what the QEMU lab tests rely on: a server
// in the lab is reachable from inside it, the lab has no route out, dnsmasq
// starts on the lab's bridge with docs/lab/dnsmasq.conf, taps attach to the
// bridge, and the namespace is gone after the test.
func TestLab(t *testing.T) {
	if testing.Short() {
		t.Skip("the lab test is skipped with -short")
	}
	var name string
	t.Run("up", func(t *testing.T) {
		l := NewLab(t)
		name = l.Name
		srv := l.Nbdkit(t, "memory", "1M")
		if srv.Addr != "10.77.0.1:10809" {
			t.Errorf("first lab server at %s", srv.Addr)
		}
		c, err := l.Dial(srv.Addr, time.Second)
		if err != nil {
			t.Fatalf("dial %s in the lab: %v", srv.Addr, err)
		}
		c.Close()
		// Nothing leads out of the lab: its only route is the bridge's.
		if out, err := combined(l.Exec("ip", "route", "show")...); err != nil || strings.TrimSpace(out) != "10.77.0.0/24 dev br0 proto kernel scope link src 10.77.0.1" {
			t.Errorf("the lab's routes are not just its bridge's: %v\n%s", err, out)
		}
		if second := l.Nbdkit(t, "memory", "1M"); second.Port != LabPort+1 {
			t.Errorf("second lab server on port %d", second.Port)
		}
		d := l.Dnsmasq(t, DnsmasqConfig{Base: "../../docs/lab/dnsmasq.conf", Set: map[string]string{"dhcp-range": "10.77.0.50,10.77.0.99,255.255.255.0,2m"}})
		if !strings.Contains(d.Output(), "lease time 2m") {
			t.Errorf("dnsmasq did not take the lease time:\n%s", d.Output())
		}
		tap := l.Tap(t)
		out, err := combined(l.Exec("ip", "-o", "link", "show", tap)...)
		if err != nil || !strings.Contains(out, "master br0") {
			t.Errorf("%s not on the bridge: %v\n%s", tap, err, out)
		}
	})
	if out, _ := combined("ip", "netns", "list"); strings.Contains(out, name) {
		t.Errorf("namespace %s still exists after the test", name)
	}
}
