package ifname

import (
	"errors"
	"strings"
	"testing"
)

func TestDisabled(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    bool
	}{
		{"", false},
		{"console=ttyS0 root=/dev/nbd0", false},
		{"net.ifnames=0", true},
		{"quiet net.ifnames=0 ip=dhcp", true},
		{"net.ifnames=no", true},
		{"net.ifnames=OFF", true},
		{"net.ifnames=f", true},
		{`net.ifnames="0"`, true},
		{"net.ifnames=1", false},
		{"net.ifnames=yes", false},
		{"net.ifnames=0 net.ifnames=1", false}, // the last one counts
		{"net.ifnames=1 net.ifnames=0", true},
		{"net.ifnames=0 net.ifnames", true}, // a bare one does not reset the value
		{"net.ifnames", false},
		{"net.ifnames=", false},   // unparsable: names stay on
		{"net.ifnames=2", false},  // unparsable: names stay on
		{"net.ifnamesx=0", false}, // another key
		{"rd.net.ifnames=0", false},
		{"xnet.ifnames=0", false},
		{"init=/sbin/init -- net.ifnames=0", true}, // udev reads the whole line
	} {
		if got := Disabled(tc.cmdline); got != tc.want {
			t.Errorf("Disabled(%q) = %v, want %v", tc.cmdline, got, tc.want)
		}
	}
}

func FuzzDisabled(f *testing.F) {
	for _, s := range []string{"net.ifnames=0", `a="b c" net.ifnames=off`, "net.ifnames", "-- net.ifnames=n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmdline string) {
		got := Disabled(cmdline)
		if got && !strings.Contains(cmdline, cmdlineKey+"=") {
			t.Errorf("Disabled(%q) = true without %s= on the line", cmdline, cmdlineKey)
		}
	})
}

func TestResolve(t *testing.T) {
	names := NewNames([]Rename{{Index: 2, Old: "eth0", New: "ens3"}, {Index: 3, Old: "eth1", New: "enp1s0"}})
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"eth0", "ens3", true}, {"ens3", "ens3", true},
		{"eth1", "enp1s0", true}, {"enp1s0", "enp1s0", true},
		{"eth2", "eth2", false}, {"ens4", "ens4", false}, {"", "", false},
	} {
		if got, ok := names.Resolve(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("Resolve(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if got, ok := Names(nil).Resolve("eth0"); got != "eth0" || ok {
		t.Errorf("nil Names: Resolve(eth0) = %q, %v", got, ok)
	}
}

func TestLinkError(t *testing.T) {
	cause := errors.New("boom")
	for _, tc := range []struct {
		err  *LinkError
		want string
	}{
		{&LinkError{Link: "eth0", Err: cause}, "naming eth0: boom"},
		{&LinkError{Link: "eth0", New: "ens3", Err: ErrLinkUp}, "renaming eth0 to ens3: " + ErrLinkUp.Error()},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
		if !errors.Is(tc.err, tc.err.Err) {
			t.Errorf("%v does not unwrap to its cause", tc.err)
		}
	}
}
