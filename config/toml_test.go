package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// files returns a ReadFile over an in-memory file set.
func files(m map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := m[p]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
}

// resolveTOML resolves a default config file holding text and a command line.
func resolveTOML(text, cmdline string) (*Resolved, error) {
	return Resolve(Sources{Cmdline: cmdline, ReadFile: files(map[string]string{DefaultConfigPath: text})})
}

const allSections = `
[server]
servers = ["nbd://10.0.0.1:2000/root", "[2001:db8::1]/root", "srv:/abs"]
connect_timeout = "2s"
handshake_timeout = "3s"
deadline = "1h"
backoff_initial = "100ms"
backoff_max = "1m"
order = "spread"

[tls]
ca = "/etc/nbdroot/ca.pem"
cert = "/etc/nbdroot/cert.pem"
key = "/etc/nbdroot/key.pem"
server_name = "nbd.example.org"
verify_peer = false

[device]
index = 3
interface = "netlink"
block_size = 4096
timeout = "30s"
dead_conn_timeout = "0s"
connections = 4
read_only = true

[network]
mode = "static"
interfaces = ["eth0", "eth1"]
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53", "2001:db8::53"]
hostname = "client7"
link_timeout = "20s"
dhcp_timeout = "1m"

[root]
fstype = "ext4"
flags = "noatime,errors=remount-ro"
read_only = false
partition = 2
overlay = "tmpfs"
init = "/lib/systemd/systemd"
init_args = ["--unit=multi-user.target"]

[boot]
modules = ["virtio_blk", "e1000e"]
on_failure = "poweroff"
failure_delay = "1m30s"
log_level = "debug"
`

func allSectionsSpec() Spec {
	return Spec{
		Server: Server{
			Endpoints:      []Endpoint{ep("10.0.0.1", 2000, "root"), ep("2001:db8::1", DefaultPort, "root"), ep("srv", DefaultPort, "/abs")},
			ConnectTimeout: 2 * time.Second, HandshakeTimeout: 3 * time.Second, Deadline: time.Hour,
			BackoffInitial: 100 * time.Millisecond, BackoffMax: time.Minute, Order: OrderSpread,
		},
		TLS: TLS{Enabled: true, CAFile: "/etc/nbdroot/ca.pem", CertFile: "/etc/nbdroot/cert.pem", KeyFile: "/etc/nbdroot/key.pem",
			ServerName: "nbd.example.org", VerifyPeer: false},
		Device: Device{Index: 3, Interface: InterfaceNetlink, BlockSize: 4096, Timeout: 30 * time.Second,
			DeadConnTimeout: 0, Connections: 4, ReadOnly: true},
		Network: Network{Mode: NetworkStatic, Interfaces: []string{"eth0", "eth1"},
			Address: netip.MustParsePrefix("192.0.2.10/24"), Gateway: netip.MustParseAddr("192.0.2.1"),
			DNS:      []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")},
			Hostname: "client7", LinkTimeout: 20 * time.Second, DHCPTimeout: time.Minute},
		Root: Root{FSType: "ext4", Flags: "noatime,errors=remount-ro", ReadOnly: false, Partition: 2,
			Overlay: OverlayTmpfs, Init: "/lib/systemd/systemd", InitArgs: []string{"--unit=multi-user.target"}},
		Boot: Boot{Modules: []string{"virtio_blk", "e1000e"}, OnFailure: FailPoweroff, FailureDelay: 90 * time.Second, LogLevel: "debug"},
	}
}

func TestTOMLAllSections(t *testing.T) {
	r, err := resolveTOML(allSections, "quiet")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(allSectionsSpec(), r.Spec, cmpOpts); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	if r.ConfigFile != DefaultConfigPath {
		t.Errorf("ConfigFile = %q", r.ConfigFile)
	}
	for key, want := range map[string]string{
		"server.servers":    DefaultConfigPath + ":3",
		"device.block_size": DefaultConfigPath + ":21",
		"boot.log_level":    DefaultConfigPath + ":50",
		"tls.required":      "implied by tls.ca (" + DefaultConfigPath + ":12)",
	} {
		if got := r.Origin[key]; got != want {
			t.Errorf("Origin[%q] = %q, want %q", key, got, want)
		}
	}
}

func TestTOMLForms(t *testing.T) {
	// Dotted keys, inline tables and "auto" values mean the same as tables.
	r, err := resolveTOML(`device.index = 2
root = { partition = 1, fstype = "auto" }
[server]
servers = ["nbds://srv/x?tls-hostname=h"]
[device]
block_size = 0
`, "")
	if err != nil {
		t.Fatal(err)
	}
	w := withServer(ep("srv", DefaultPort, "x"), func(s *Spec) {
		s.Device.Index, s.Root.Partition = 2, 1
		s.TLS.Enabled, s.TLS.ServerName = true, "h"
	})
	if diff := cmp.Diff(w, r.Spec, cmpOpts); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestTOMLErrors(t *testing.T) {
	p := DefaultConfigPath
	tests := []struct{ text, want string }{
		{"[device]\nconections = 4\n", p + ":2: device.conections: unknown key (did you mean device.connections?)"},
		{"[devcie]\nindex = 1\nfoo = 2\n", p + ":1: devcie: unknown key (did you mean device?)"},
		{"connections = 4\n", p + ":1: connections: unknown key (connections belongs in [device])"},
		{"[frobnicate]\n", p + ":1: frobnicate: unknown key"},
		{"[device]\nindex = 1\n\nblock_size = 3000\n", p + ":4: device.block_size: 3000 is not a power of two between 512 and 4096"},
		{"[device]\nconnections = \"4\"\n", p + `:2: device.connections: "4" is a string; want an integer`},
		{"[device]\ntimeout = 30\n", p + `:2: device.timeout: 30 is an integer; want a duration string such as "5s"`},
		{"[device]\nindex = \"first\"\n", p + `:2: device.index: "first" is not "auto" or an integer`},
		{"[network]\ndns = [\"1.1.1.1\", 8]\n", p + `:2: network.dns: list element 8 is an integer; want a string`},
		{"[network]\ndns = \"1.1.1.1\"\n", p + `:2: network.dns: "1.1.1.1" is a string; want a list of strings such as ["a", "b"]`},
		{"[network]\naddress = \"192.0.2.10\"\n", p + `:2: network.address: "192.0.2.10" is not an address with prefix length such as "192.0.2.10/24"`},
		{"[network]\nmode = \"static\"\n[server]\nservers = [\"a/x\"]\n", p + `:2: network.mode: network.mode = "static" needs network.address (e.g. "192.0.2.10/24", or ip=CLIENT:…)`},
		{"device = 3\n", p + ":1: device: is integer; want a table [device]"},
		{"[[server]]\nservers = []\n", p + ":1: server: is arrayhash; want a table [server]"},
		{"[device]\nblock_size.x = 1\n", p + `:2: device.block_size: is a table; want "auto" or an integer`},
		{"[server]\nservers = [\"srv:99999/root\"]\n", p + `:2: server.servers: "srv:99999/root": port 99999 is out of range 1-65535`},
		{"[server]\nservers = [\"nbds://a/x\"]\n[tls]\nrequired = false\n", p + `:4: tls.required: sets tls.required = false, but server.servers (` + p + `:2) sets tls.required = true`},
		{"[tls]\nca = \"/ca.pem\"\nrequired = false\n[server]\nservers = [\"a/x\"]\n", p + `:2: tls.ca: tls.ca = "/ca.pem" needs TLS, but tls.required (` + p + `:3) sets tls.required = false`},
		{"[root]\nread_only = false\n[device]\nread_only = true\n[server]\nservers = [\"a/x\"]\n",
			p + `:2: root.read_only: the root is to be mounted read-write, but device.read_only = true (` + p + `:4) and root.overlay = "none": mount the root ro, or set root.overlay = "tmpfs"`},
		{"[device]\nindex = \n", p + ":2: TOML syntax: expected value but found '\\n' instead"},
		{"[device]\nindex = 1\nindex = 2\n", p + `:3: TOML syntax: Key 'device.index' has already been defined.`},
		{"[server]\nservers = [\"a/x\"]\n[device]\nconnections = 0\ninterface = \"kernel\"\n",
			p + ":4: device.connections: 0 is out of range 1-64\n" + p + `:5: device.interface: "kernel" is not one of auto, netlink, ioctl`},
	}
	for _, tc := range tests {
		_, err := resolveTOML(tc.text, "")
		if err == nil {
			t.Errorf("%q: no error, want %q", tc.text, tc.want)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.text, err, tc.want)
		}
		if !IsSpecError(err) {
			t.Errorf("%q: %v is not a spec error", tc.text, err)
		}
	}
}

func TestPrecedence(t *testing.T) {
	text := "[server]\nservers = [\"a/x\"]\n[device]\nconnections = 2\nblock_size = 4096\n[root]\nread_only = true\nfstype = \"xfs\"\n[tls]\nrequired = false\n"
	r, err := resolveTOML(text, "nbdroot=b/y nbdroot.device.connections=4 rw nbdroot=nbds://c/z")
	if err != nil {
		t.Fatal(err)
	}
	w := withServer(ep("c", DefaultPort, "z"), func(s *Spec) {
		s.Device.Connections, s.Device.BlockSize = 4, 4096
		s.Root.ReadOnly, s.Root.FSType = false, "xfs"
		s.TLS.Enabled = true
	})
	if diff := cmp.Diff(w, r.Spec, cmpOpts); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	for key, want := range map[string]string{
		"device.connections": "cmdline: nbdroot.device.connections=4",
		"device.block_size":  DefaultConfigPath + ":5",
		"root.read_only":     "cmdline: rw",
		"tls.required":       "cmdline: nbdroot=nbds://c/z",
		"device.index":       "default",
	} {
		if got := r.Origin[key]; got != want {
			t.Errorf("Origin[%q] = %q, want %q", key, got, want)
		}
	}
}

func TestConfigFileSelection(t *testing.T) {
	fsys := files(map[string]string{
		DefaultConfigPath:    "[server]\nservers = [\"default/x\"]\n",
		"/etc/other.toml":    "[server]\nservers = [\"other/x\"]\n",
		"/etc/flagged.toml":  "[server]\nservers = [\"flagged/x\"]\n",
		"/etc/broken.toml":   "[server\n",
		"/etc/noserver.toml": "[device]\nconnections = 2\n",
	})
	tests := []struct {
		src        Sources
		host, want string
	}{
		{src: Sources{ReadFile: fsys}, host: "default"},
		{src: Sources{Cmdline: "nbdroot.config=/etc/other.toml", ReadFile: fsys}, host: "other"},
		{src: Sources{Cmdline: "nbdroot.config=/etc/other.toml", ConfigPath: "/etc/flagged.toml", ReadFile: fsys}, host: "flagged"},
		{src: Sources{Cmdline: "nbdroot=srv/x", ReadFile: files(nil)}, host: "srv"},
		{src: Sources{Cmdline: "nbdroot=srv/x"}, host: "srv"},
		{src: Sources{ConfigPath: "/etc/noserver.toml", ReadFile: fsys, Partial: true}, host: ""},
		{src: Sources{Cmdline: "nbdroot.config=/etc/missing.toml nbdroot=srv/x", ReadFile: fsys},
			want: `cmdline: nbdroot.config="/etc/missing.toml": cannot read /etc/missing.toml: file does not exist`},
		{src: Sources{ConfigPath: "/etc/missing.toml", Cmdline: "nbdroot=srv/x", ReadFile: fsys},
			want: `--config: "/etc/missing.toml": cannot read /etc/missing.toml: file does not exist`},
		{src: Sources{ConfigPath: "/etc/other.toml", Cmdline: "nbdroot=srv/x"},
			want: `--config: "/etc/other.toml": cannot read /etc/other.toml: no file reader was given`},
		{src: Sources{ReadFile: func(string) ([]byte, error) { return nil, errors.New("I/O error") }, Cmdline: "nbdroot=srv/x"},
			want: DefaultConfigPath + ": cannot read " + DefaultConfigPath + ": I/O error"},
		{src: Sources{ConfigPath: "/etc/broken.toml", ReadFile: fsys},
			want: "/etc/broken.toml:2: TOML syntax: expected '.' or ']' to end table name, but got '\\n' instead"},
		{src: Sources{ConfigPath: "/etc/noserver.toml", ReadFile: fsys},
			want: "cmdline: no NBD server: add nbdroot=HOST:PORT/NAME (or root=nbd:HOST:PORT|NAME, or server.servers in the config file)"},
	}
	for i, tc := range tests {
		r, err := Resolve(tc.src)
		if tc.want != "" {
			if err == nil || err.Error() != tc.want {
				t.Errorf("%d: error %v, want %s", i, err, tc.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		host := ""
		if len(r.Spec.Server.Endpoints) > 0 {
			host = r.Spec.Server.Endpoints[0].Host
		}
		if host != tc.host {
			t.Errorf("%d: server host %q, want %q", i, host, tc.host)
		}
	}
}

// TestExampleFile checks that docs/nbdroot.toml parses and sets every key.
func TestExampleFile(t *testing.T) {
	const path = "../docs/nbdroot.toml"
	r, err := Resolve(Sources{ConfigPath: path, ReadFile: os.ReadFile})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, k := range keyTable() {
		if o := r.Origin[k.name]; !strings.HasPrefix(o, path+":") {
			t.Errorf("%s does not set %s (origin %q)", path, k.name, o)
		}
	}
	if len(r.Spec.Server.Endpoints) != 2 || !r.Spec.TLS.Enabled {
		t.Errorf("%s: unexpected spec %+v", path, r.Spec)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	specs := []Spec{Defaults(), allSectionsSpec(), withServer(ep("fe80::1%eth0", 1, "a \"quoted\"\tname/ü"), func(s *Spec) {
		s.Server.Endpoints = append(s.Server.Endpoints, Endpoint{HostFromDHCP: true, Port: 2, Export: "/x,y"})
		s.Root.InitArgs = []string{"a=b c", ""}
	}), want(func(s *Spec) { s.Server.FromDHCP = true })}
	for i, s := range specs {
		b, err := Marshal(s)
		if err != nil {
			t.Errorf("%d: Marshal: %v", i, err)
			continue
		}
		r, err := Resolve(Sources{ConfigPath: "m.toml", ReadFile: files(map[string]string{"m.toml": string(b)}), Partial: true})
		if err != nil {
			t.Errorf("%d: reading back:\n%s\n%v", i, b, err)
			continue
		}
		if diff := cmp.Diff(normalize(s), normalize(r.Spec), cmpOpts); diff != "" {
			t.Errorf("%d: round trip (-want +got):\n%s", i, diff)
		}
		// Format is TOML too, and reads back the same.
		r2, err := Resolve(Sources{ConfigPath: "f.toml", ReadFile: files(map[string]string{"f.toml": r.Format()}), Partial: true})
		if err != nil || !specEqual(r2.Spec, r.Spec) {
			t.Errorf("%d: Format does not read back: %v\n%s", i, err, r.Format())
		}
	}
	bad := []struct {
		s    Spec
		want string
	}{
		{want(func(s *Spec) { s.Device.BlockSize = 3000 }), "config: cannot marshal spec: spec:21: device.block_size: 3000 is not a power of two between 512 and 4096"},
		{want(func(s *Spec) { s.TLS.CAFile = "/ca.pem" }), `config: cannot marshal spec: spec:12: tls.ca: tls.ca = "/ca.pem" needs TLS, but tls.required (spec:11) sets tls.required = false`},
		{want(func(s *Spec) { s.Server.Endpoints = []Endpoint{{Host: "FE80::1", Port: 1}} }), `config: cannot marshal spec: server.servers = ["[FE80::1]:1/"] reads back as ["[fe80::1]:1/"]`},
		{want(func(s *Spec) { s.Server.Endpoints = []Endpoint{{Socket: "/s"}} }), `config: cannot marshal spec: spec:2: server.servers: "nbd+unix:///?socket=%2Fs": a Unix socket is for probe, list and attach on a running system; boot needs a TCP server`},
	}
	for i, tc := range bad {
		_, err := Marshal(tc.s)
		if err == nil || err.Error() != tc.want {
			t.Errorf("bad %d: Marshal error %v, want %s", i, err, tc.want)
		}
	}
}

// checkRoundTrip checks that a resolved spec survives Marshal and Format.
func checkRoundTrip(t *testing.T, input string, r *Resolved) {
	t.Helper()
	b, err := Marshal(r.Spec)
	if err != nil {
		t.Fatalf("input %q: Marshal: %v", input, err)
	}
	for name, text := range map[string]string{"Marshal": string(b), "Format": r.Format()} {
		r2, err := Resolve(Sources{ConfigPath: "rt.toml", ReadFile: files(map[string]string{"rt.toml": text}), Partial: true})
		if err != nil {
			t.Fatalf("input %q: %s output does not parse: %v\n%s", input, name, err, text)
		}
		if !specEqual(r.Spec, r2.Spec) {
			t.Fatalf("input %q: %s round trip differs:\n%s", input, name, cmp.Diff(normalize(r.Spec), normalize(r2.Spec), cmpOpts))
		}
	}
}

func FuzzCmdline(f *testing.F) {
	for _, s := range []string{
		"nbdroot=10.0.0.1:10809/root", "nbdroot=[2001:db8::1]:/x ip=192.0.2.10::192.0.2.1:255.255.255.0:h:eth0:off:192.0.2.53",
		"root=nbd:srv:root:ext4:ro,noatime:persist,timeout=30,bs=4096 rw", "nbdroot=nbds://srv/a%20b?tls-hostname=x&tls-verify-peer=0",
		`"nbdroot=srv/a b" rootflags="x y" -- single "a b"`, "nbdroot=srv,root,nbd3 root=/dev/nbd3p2 nbdroot.device.connections=4",
		"nbdroot=dhcp ip=eth0:dhcp nbdroot.network.dns=1.1.1.1,8.8.8.8", "nbdroot.server.servers=a/x,b:1/y nbdroot.tls.ca=/ca",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmdline string) {
		r, err := Resolve(Sources{Cmdline: cmdline, Partial: true})
		if err != nil {
			if !IsSpecError(err) {
				t.Fatalf("input %q: error %v is not a spec error", cmdline, err)
			}
			return
		}
		checkRoundTrip(t, cmdline, r)
	})
}

func FuzzTOML(f *testing.F) {
	f.Add(allSections)
	if b, err := os.ReadFile("../docs/nbdroot.toml"); err == nil {
		f.Add(string(b))
	}
	for _, s := range []string{"[device]\nindex = 3\n", "device.index = \"auto\"\nroot = {partition = 1}\n",
		"[server]\nservers = [\"nbds://[::1]:2/x?tls-hostname=h\"]\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := Resolve(Sources{ConfigPath: "f.toml", ReadFile: files(map[string]string{"f.toml": text}), Partial: true})
		if err != nil {
			if !IsSpecError(err) {
				t.Fatalf("input %q: error %v is not a spec error", text, err)
			}
			return
		}
		checkRoundTrip(t, text, r)
	})
}

func ExampleResolve() {
	r, err := Resolve(Sources{Cmdline: "console=ttyS0 nbdroot=10.0.0.1:10809/root ip=dhcp rw"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Spec.Server.Endpoints[0], r.Spec.Root.ReadOnly, r.Origin["server.servers"])
	// Output: 10.0.0.1:10809/root false cmdline: nbdroot=10.0.0.1:10809/root
}
