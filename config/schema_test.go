package config

import (
	"bytes"
	"flag"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSet(t *testing.T) {
	tests := []struct {
		key, value string
		want       Spec
	}{
		{"device.block_size", "4096", want(func(s *Spec) { s.Device.BlockSize = 4096 })},
		{"device.block_size", "auto", Defaults()},
		{"device.block_size", "0", Defaults()},
		{"device.index", "3", want(func(s *Spec) { s.Device.Index = 3 })},
		{"device.interface", "ioctl", want(func(s *Spec) { s.Device.Interface = InterfaceIoctl })},
		{"device.timeout", "30s", want(func(s *Spec) { s.Device.Timeout = 30 * time.Second })},
		{"device.read_only", "yes", want(func(s *Spec) { s.Device.ReadOnly = true })},
		{"network.dns", "1.1.1.1,2001:DB8::1", want(func(s *Spec) {
			s.Network.DNS = []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2001:db8::1")}
		})},
		{"network.address", "192.0.2.10/24", want(func(s *Spec) { s.Network.Address = netip.MustParsePrefix("192.0.2.10/24") })},
		{"root.fstype", "auto", Defaults()},
		{"server.servers", "nbds://srv/x?tls-hostname=h", withServer(ep("srv", DefaultPort, "x"), func(s *Spec) {
			s.TLS.Enabled, s.TLS.ServerName = true, "h"
		})},
		{"server.servers", "dhcp", want(func(s *Spec) { s.Server.FromDHCP = true })},
	}
	for _, tc := range tests {
		s := Defaults()
		if err := s.Set(tc.key, tc.value); err != nil {
			t.Errorf("Set(%q, %q): %v", tc.key, tc.value, err)
			continue
		}
		if diff := cmp.Diff(tc.want, s, cmpOpts); diff != "" {
			t.Errorf("Set(%q, %q) (-want +got):\n%s", tc.key, tc.value, diff)
		}
	}
	bad := []struct{ key, value, want string }{
		{"device.block_size", "3000", "device.block_size: 3000 is not a power of two between 512 and 4096"},
		{"device.block_size", "-512", "device.block_size: -512 is not a power of two between 512 and 4096"},
		{"device.connections", "0", "device.connections: 0 is out of range 1-64"},
		{"device.interface", "kernel", `device.interface: "kernel" is not one of auto, netlink, ioctl`},
		{"device.timeout", "1500ms", "device.timeout: 1.5s is not a whole number of seconds (the kernel counts seconds)"},
		{"server.deadline", "5", `server.deadline: "5" is not a duration (want e.g. "5s", "250ms", "2m")`},
		{"device.conections", "4", "device.conections: unknown key (did you mean device.connections?)"},
		{"network.dns", "1.1.1.1,x", `network.dns: "x" is not an IP address`},
	}
	for _, tc := range bad {
		s := Defaults()
		err := s.Set(tc.key, tc.value)
		if err == nil || err.Error() != tc.want || !IsSpecError(err) {
			t.Errorf("Set(%q, %q) = %v, want %s", tc.key, tc.value, err, tc.want)
		}
		if diff := cmp.Diff(Defaults(), s, cmpOpts); diff != "" {
			t.Errorf("failed Set(%q, %q) changed the spec:\n%s", tc.key, tc.value, diff)
		}
	}
}

// TestSetText checks that every key reads back its own text form, for
// the defaults and for the example file's values.
func TestSetText(t *testing.T) {
	for _, spec := range []Spec{Defaults(), exampleSpec(), allSectionsSpec()} {
		for _, k := range keyTable() {
			text := spec.Flag(k.name).String()
			s := spec
			if err := s.Set(k.name, text); err != nil {
				t.Errorf("Set(%q, %q): %v", k.name, text, err)
				continue
			}
			if diff := cmp.Diff(normalize(spec), normalize(s), cmpOpts); diff != "" {
				t.Errorf("Set(%q, %q) (-want +got):\n%s", k.name, text, diff)
			}
		}
	}
}

func TestFlag(t *testing.T) {
	s := Defaults()
	fs := flag.NewFlagSet("attach", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.Var(s.Flag("device.block_size"), "block-size", "logical block size")
	fs.Var(s.Flag("device.read_only"), "read-only", "attach read-only")
	fs.Var(s.Flag("device.dead_conn_timeout"), "dead-conn-timeout", "reconnect wait")
	if err := fs.Parse([]string{"--block-size", "4096", "--read-only", "--dead-conn-timeout=1m"}); err != nil {
		t.Fatal(err)
	}
	w := want(func(s *Spec) {
		s.Device.BlockSize, s.Device.ReadOnly, s.Device.DeadConnTimeout = 4096, true, time.Minute
	})
	if diff := cmp.Diff(w, s, cmpOpts); diff != "" {
		t.Errorf("flags (-want +got):\n%s", diff)
	}
	err := fs.Parse([]string{"--block-size=3000"})
	if want := `invalid value "3000" for flag -block-size: 3000 is not a power of two between 512 and 4096`; err == nil || err.Error() != want {
		t.Errorf("bad flag: %v, want %s", err, want)
	}
	out.Reset()
	fresh := Defaults()
	fs = flag.NewFlagSet("attach", flag.ContinueOnError)
	fs.SetOutput(&out)
	fs.Var(fresh.Flag("device.dead_conn_timeout"), "dead-conn-timeout", "reconnect wait")
	fs.PrintDefaults()
	if !strings.Contains(out.String(), `(default 2m)`) {
		t.Errorf("PrintDefaults does not show the spec's default:\n%s", out.String())
	}
}

func TestSchema(t *testing.T) {
	// Every key is listed once, in Spec's order, under its table.
	seen := map[string]bool{}
	for _, k := range keyTable() {
		sec, _, _ := strings.Cut(k.name, ".")
		if seen[k.name] || sections()[k.field[0]] != sec {
			t.Errorf("key %s is listed twice or under the wrong table", k.name)
		}
		seen[k.name] = true
	}
	if len(seen) != 40 { // the 40 keys of docs/nbdroot.toml
		t.Errorf("%d keys, want 40", len(seen))
	}
	for _, tc := range []struct{ name, alias string }{{"root.fstype", "rootfstype"}, {"root.flags", "rootflags"}, {"root.init", "init"}} {
		if k := keyIndex()[tc.name]; k.alias != tc.alias {
			t.Errorf("%s: alias %q, want %q", tc.name, k.alias, tc.alias)
		}
	}
}
