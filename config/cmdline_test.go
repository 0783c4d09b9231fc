package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// want returns Defaults() changed by f.
func want(f func(s *Spec)) Spec {
	s := Defaults()
	f(&s)
	return s
}

func ep(host string, port uint16, export string) Endpoint {
	return Endpoint{Host: host, Port: port, Export: export}
}

// withServer is want with one endpoint.
func withServer(e Endpoint, f func(s *Spec)) Spec {
	return want(func(s *Spec) {
		s.Server.Endpoints = []Endpoint{e}
		if f != nil {
			f(s)
		}
	})
}

var cmpOpts = cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}

func TestCmdlineForms(t *testing.T) {
	srv := ep("srv", DefaultPort, "root")
	tests := []struct {
		cmdline string
		want    Spec
	}{
		// nbdroot's own form and Debian's.
		{"nbdroot=10.0.0.1:10809/root", withServer(ep("10.0.0.1", 10809, "root"), nil)},
		{"nbdroot=srv:2000/root", withServer(ep("srv", 2000, "root"), nil)},
		{"nbdroot=srv/root", withServer(srv, nil)},
		{"nbdroot=srv:/root", withServer(ep("srv", DefaultPort, "/root"), nil)},
		{"nbdroot=srv:10809/images/web/root", withServer(ep("srv", DefaultPort, "images/web/root"), nil)},
		{"nbdroot=srv", withServer(ep("srv", DefaultPort, ""), nil)},
		{"nbdroot=srv.example.org:2000", withServer(ep("srv.example.org", 2000, ""), nil)},
		{"nbdroot=[2001:db8::1]:2000/root", withServer(ep("2001:db8::1", 2000, "root"), nil)},
		{"nbdroot=[2001:DB8:0::1]:/root", withServer(ep("2001:db8::1", DefaultPort, "/root"), nil)},
		{"nbdroot=[fe80::1%eth0]/root", withServer(ep("fe80::1%eth0", DefaultPort, "root"), nil)},
		{"nbdroot=srv,2000", withServer(ep("srv", 2000, ""), nil)},
		{"nbdroot=srv,root", withServer(srv, nil)},
		{"nbdroot=srv,root,nbd3", withServer(srv, func(s *Spec) { s.Device.Index = 3 })},
		{"nbdroot=srv,root,/dev/nbd12", withServer(srv, func(s *Spec) { s.Device.Index = 12 })},
		{"nbdroot=dhcp", want(func(s *Spec) { s.Server.FromDHCP = true })},
		{"nbdroot=", want(func(s *Spec) { s.Server.FromDHCP = true })},
		{"nbdroot", want(func(s *Spec) { s.Server.FromDHCP = true })},
		{"nbdroot=dhcp:2000/root", withServer(Endpoint{HostFromDHCP: true, Port: 2000, Export: "root"}, nil)},
		{"nbdroot=dhcp,2000", withServer(Endpoint{HostFromDHCP: true, Port: 2000}, nil)},
		{"nbdroot=srv/root nbddev=/dev/nbd2", withServer(srv, func(s *Spec) { s.Device.Index = 2 })},
		{"nbdroot=srv/root root=/dev/nbd1p2", withServer(srv, func(s *Spec) { s.Device.Index = 1; s.Root.Partition = 2 })},
		{"root=/dev/nbd0 nbdroot=srv/root", withServer(srv, func(s *Spec) { s.Device.Index = 0 })},
		{"nbdroot=srv,root,nbd1 nbddev=/dev/nbd1 root=/dev/nbd1p1", withServer(srv, func(s *Spec) { s.Device.Index = 1; s.Root.Partition = 1 })},
		// dracut.
		{"root=nbd:srv:2000", withServer(ep("srv", 2000, ""), nil)},
		{"root=nbd:srv:root", withServer(srv, nil)},
		{"root=nbd:srv:root:ext4", withServer(srv, func(s *Spec) { s.Root.FSType = "ext4" })},
		{"root=nbd:srv:2000:xfs:noatime,ro:persist,timeout=30,bs=4096,connections=4",
			withServer(ep("srv", 2000, ""), func(s *Spec) {
				s.Root.FSType, s.Root.Flags = "xfs", "noatime"
				s.Device.Timeout, s.Device.BlockSize, s.Device.Connections = 30*time.Second, 4096, 4
			})},
		{"root=nbd:[2001:db8::2]:root:auto", withServer(ep("2001:db8::2", DefaultPort, "root"), nil)},
		{"root=nbd:[2001:db8::2]:2000", withServer(ep("2001:db8::2", 2000, ""), nil)},
		{"netroot=nbd:srv:2000::rw", withServer(ep("srv", 2000, ""), func(s *Spec) { s.Root.ReadOnly = false })},
		{"root=nbd:srv:root:ext4::-readonly,ro", withServer(srv, func(s *Spec) { s.Root.FSType = "ext4"; s.Device.ReadOnly = true })},
		{"root=nbd:srv:root:::nonetlink,-systemd-mark", withServer(srv, func(s *Spec) { s.Device.Interface = InterfaceIoctl })},
		{"root=nbd:srv:root:::persist,-swap", withServer(srv, func(s *Spec) { s.Device.Swap = true })},
		{"root=nbd:srv:root:::s", withServer(srv, func(s *Spec) { s.Device.Swap = true })},
		{"root=nbd:srv:root:ext4:ro rw", withServer(srv, func(s *Spec) { s.Root.FSType = "ext4"; s.Root.ReadOnly = false })},
		{"rw root=nbd:srv:root:ext4:ro", withServer(srv, func(s *Spec) { s.Root.FSType = "ext4"; s.Root.ReadOnly = false })},
		{"nbdroot=srv/root root=nbd:srv:root", withServer(srv, nil)},
		{"netroot=nbd:srv:root root=/dev/nbd0p1", withServer(srv, func(s *Spec) { s.Device.Index = 0; s.Root.Partition = 1 })},
		// NBD URIs.
		{"nbdroot=nbd://srv/root", withServer(srv, nil)},
		{"nbdroot=nbd://srv:2000/my%20export%2Fv2", withServer(ep("srv", 2000, "my export/v2"), nil)},
		{"nbdroot=nbd://srv//abs/path", withServer(ep("srv", DefaultPort, "/abs/path"), nil)},
		{"nbdroot=nbd://srv", withServer(ep("srv", DefaultPort, ""), nil)},
		{"nbdroot=nbds://srv/root", withServer(srv, func(s *Spec) { s.TLS.Enabled = true })},
		{"nbdroot=nbds://[2001:db8::1]:2000/root?tls-hostname=nbd.example.org&tls-verify-peer=false",
			withServer(ep("2001:db8::1", 2000, "root"), func(s *Spec) {
				s.TLS = TLS{Enabled: true, ServerName: "nbd.example.org", VerifyPeer: false}
			})},
		{"root=nbds://srv/root", withServer(srv, func(s *Spec) { s.TLS.Enabled = true })},
		// ip=.
		{"nbdroot=srv/root ip=dhcp", withServer(srv, nil)},
		{"nbdroot=srv/root ip=off", withServer(srv, func(s *Spec) { s.Network.Mode = NetworkNone })},
		{"nbdroot=srv/root ip=none", withServer(srv, func(s *Spec) { s.Network.Mode = NetworkNone })},
		{"nbdroot=srv/root ip=", withServer(srv, nil)},
		{"nbdroot=srv/root ip=192.0.2.10::192.0.2.1:255.255.255.0:client1:eth0:off:192.0.2.53:192.0.2.54:192.0.2.123",
			withServer(srv, func(s *Spec) {
				s.Network = Network{Mode: NetworkStatic, Interfaces: []string{"eth0"},
					Address: netip.MustParsePrefix("192.0.2.10/24"), Gateway: netip.MustParseAddr("192.0.2.1"),
					DNS:      []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54")},
					Hostname: "client1", LinkTimeout: 10 * time.Second, DHCPTimeout: 30 * time.Second}
			})},
		{"nbdroot=srv/root ip=192.0.2.10:::::eth0:", withServer(srv, func(s *Spec) {
			s.Network.Mode, s.Network.Address, s.Network.Interfaces = NetworkStatic, netip.MustParsePrefix("192.0.2.10/24"), []string{"eth0"}
		})},
		{"nbdroot=srv/root ip=10.1.2.3", withServer(srv, func(s *Spec) {
			s.Network.Mode, s.Network.Address = NetworkStatic, netip.MustParsePrefix("10.1.2.3/8")
		})},
		{"nbdroot=srv/root ip=172.16.0.9:::16::eth1:none", withServer(srv, func(s *Spec) {
			s.Network.Mode, s.Network.Address, s.Network.Interfaces = NetworkStatic, netip.MustParsePrefix("172.16.0.9/16"), []string{"eth1"}
		})},
		{"nbdroot=srv/root ip=::::host2:eth1:dhcp", withServer(srv, func(s *Spec) {
			s.Network.Hostname, s.Network.Interfaces = "host2", []string{"eth1"}
		})},
		{"nbdroot=srv/root ip=eth0:dhcp", withServer(srv, func(s *Spec) { s.Network.Interfaces = []string{"eth0"} })},
		{"nbdroot=srv/root ip=[2001:db8::5]::[2001:db8::1]:64::eth0:off", withServer(srv, func(s *Spec) {
			s.Network.Mode, s.Network.Address, s.Network.Interfaces = NetworkStatic, netip.MustParsePrefix("2001:db8::5/64"), []string{"eth0"}
			s.Network.Gateway = netip.MustParseAddr("2001:db8::1")
		})},
		// Kernel root arguments.
		{"nbdroot=srv/root rootfstype=ext4 rootflags=data=journal ro init=/bin/sh", withServer(srv, func(s *Spec) {
			s.Root.FSType, s.Root.Flags, s.Root.Init = "ext4", "data=journal", "/bin/sh"
		})},
		{"nbdroot=srv/root rw", withServer(srv, func(s *Spec) { s.Root.ReadOnly = false })},
		{"nbdroot=srv/root ro rw", withServer(srv, func(s *Spec) { s.Root.ReadOnly = false })},
		{"nbdroot=srv/root rw ro", withServer(srv, nil)},
		{"nbdroot=srv/root ro=0", withServer(srv, nil)},
		// Quoting and --.
		{`nbdroot=srv/root rootflags="a b"`, withServer(srv, func(s *Spec) { s.Root.Flags = "a b" })},
		{`"nbdroot=srv/my root"`, withServer(ep("srv", DefaultPort, "my root"), nil)},
		{"nbdroot=srv/root\tquiet\n", withServer(srv, nil)},
		{`nbdroot=srv/root -- single "x y" emergency`, withServer(srv, func(s *Spec) { s.Root.InitArgs = []string{"single", "x y", "emergency"} })},
		{`nbdroot=srv/root -- -s nbdroot=other/x a="b c"`, withServer(srv, func(s *Spec) { s.Root.InitArgs = []string{"-s", "nbdroot=other/x", "a=b c"} })},
		// nbdroot.KEY=VALUE.
		{"nbdroot=srv/root nbdroot.device.connections=4 nbdroot.tls.ca=/etc/nbdroot/ca.pem nbdroot.network.dns=1.1.1.1,8.8.8.8 nbdroot.boot.modules=e1000,virtio_net",
			withServer(srv, func(s *Spec) {
				s.Device.Connections = 4
				s.TLS.CAFile, s.TLS.Enabled = "/etc/nbdroot/ca.pem", true
				s.Network.DNS = []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("8.8.8.8")}
				s.Boot.Modules = []string{"e1000", "virtio_net"}
			})},
		{"nbdroot.server.servers=a/x,[2001:db8::9]:2000/y", want(func(s *Spec) {
			s.Server.Endpoints = []Endpoint{ep("a", DefaultPort, "x"), ep("2001:db8::9", 2000, "y")}
		})},
		{"nbdroot=srv/root nbdroot.root.overlay=tmpfs nbdroot.device.read_only=yes rw", withServer(srv, func(s *Spec) {
			s.Root.Overlay, s.Device.ReadOnly, s.Root.ReadOnly = OverlayTmpfs, true, false
		})},
		{"nbdroot=srv/root nbdroot.device.index=auto nbdroot.device.block_size=4096 nbdroot.device.timeout=30s nbdroot.device.interface=netlink nbdroot.server.deadline=1h30m",
			withServer(srv, func(s *Spec) {
				s.Device.BlockSize, s.Device.Timeout, s.Device.Interface = 4096, 30*time.Second, InterfaceNetlink
				s.Server.Deadline = 90 * time.Minute
			})},
		{"nbdroot=srv/root nbdroot.boot.on_failure=reboot nbdroot.boot.failure_delay=0s nbdroot.boot.log_level=debug nbdroot.root.init_args=",
			withServer(srv, func(s *Spec) { s.Boot.OnFailure, s.Boot.FailureDelay, s.Boot.LogLevel = FailReboot, 0, "debug" })},
		// Other arguments are ignored; within a family the last one wins.
		{"BOOT_IMAGE=/vmlinuz console=ttyS0,115200 quiet splash root=/dev/sda1 nbdroot=srv/root rd.debug netroot=iscsi:x", withServer(srv, nil)},
		{"nbdroot=other/x nbdroot=srv/root", withServer(srv, nil)},
		{"root=nbd:other:x nbdroot=srv/root root=/dev/sda1", withServer(srv, nil)},
		{"nbdroot=srv/root nbdroot.device.connections=2 nbdroot.device.connections=3", withServer(srv, func(s *Spec) { s.Device.Connections = 3 })},
	}
	for _, tc := range tests {
		r, err := Resolve(Sources{Cmdline: tc.cmdline})
		if err != nil {
			t.Errorf("Resolve(%q): %v", tc.cmdline, err)
			continue
		}
		if diff := cmp.Diff(tc.want, r.Spec, cmpOpts); diff != "" {
			t.Errorf("Resolve(%q) spec (-want +got):\n%s", tc.cmdline, diff)
		}
	}
	if len(tests) < 40 {
		t.Errorf("only %d command lines", len(tests))
	}
}

func TestCmdlineErrors(t *testing.T) {
	tests := []struct{ cmdline, want string }{
		{"nbdroot=srv:99999/root", `cmdline: nbdroot="srv:99999/root": port 99999 is out of range 1-65535`},
		{"nbdroot=srv:0/root", `cmdline: nbdroot="srv:0/root": port 0 is out of range 1-65535`},
		{"nbdroot=srv:abc/root", `cmdline: nbdroot="srv:abc/root": port "abc" is not a number`},
		{"nbdroot=fe80::1/root", `cmdline: nbdroot="fe80::1/root": IPv6 address fe80::1 must be in brackets: [fe80::1]`},
		{"nbdroot=[fe80::1/root", `cmdline: nbdroot="[fe80::1/root": IPv6 address "[fe80::1/root" has no closing ]`},
		{"nbdroot=[10.0.0.1]:2000/x", `cmdline: nbdroot="[10.0.0.1]:2000/x": "10.0.0.1" is not an IPv6 address`},
		{"nbdroot=10.0.0.300/x", `cmdline: nbdroot="10.0.0.300/x": host "10.0.0.300" is not a valid IPv4 address`},
		{"nbdroot=bad_host!/x", `cmdline: nbdroot="bad_host!/x": host "bad_host!" is not a valid host name or IP address`},
		{"nbdroot=a,b,c,d", `cmdline: nbdroot="a,b,c,d": too many commas (want HOST,PORT or HOST,NAME,nbdN)`},
		{"nbdroot=srv,root,sda", `cmdline: nbdroot="srv,root,sda": "sda" is not an nbd device (want /dev/nbdN)`},
		{"nbdroot=nbd://srv:2000/x?tls-hostnme=y", `cmdline: nbdroot="nbd://srv:2000/x?tls-hostnme=y": query key "tls-hostnme" is not supported (want tls-hostname, tls-verify-peer or socket)`},
		{"nbdroot=http://srv/x", `cmdline: nbdroot="http://srv/x": unknown URI scheme "http" (want nbd://, nbds://, nbd+unix:// or nbds+unix://)`},
		{"nbdroot=nbd+unix:///x?socket=/run/nbd.sock", `cmdline: nbdroot="nbd+unix:///x?socket=/run/nbd.sock": a Unix socket is for probe, list and attach on a running system; boot needs a TCP server`},
		{"nbdroot=nbd://srv/%zz", `cmdline: nbdroot="nbd://srv/%zz": not a valid NBD URI: invalid URL escape "%zz"`},
		{"nbdroot=nbds://srv/x?tls-verify-peer=maybe", `cmdline: nbdroot="nbds://srv/x?tls-verify-peer=maybe": tls-verify-peer="maybe" is not a boolean (want true or false)`},
		{"root=nbd:srv:root:ext4::persist,sync", `cmdline: root="nbd:srv:root:ext4::persist,sync": NBD option "sync" is not supported (want ro, persist, systemd-mark, nonetlink, swap, timeout=SECONDS, bs=BYTES or connections=N)`},
		{"root=nbd:srv:root:ext4::swap=1", `cmdline: root="nbd:srv:root:ext4::swap=1": NBD option "swap=1" is not supported (want ro, persist, systemd-mark, nonetlink, swap, timeout=SECONDS, bs=BYTES or connections=N)`},
		{"root=nbd:srv:root:::timeout=x", `cmdline: root="nbd:srv:root:::timeout=x": NBD option "timeout=x": "x" is not an integer`},
		{"root=nbd:srv:root:::bs=3000", `cmdline: root="nbd:srv:root:::bs=3000": NBD option "bs=3000": 3000 is not a power of two between 512 and 4096`},
		{"root=nbd::root", `cmdline: root="nbd::root": no server (want nbd:SERVER:PORT|NAME[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]])`},
		{"root=nbd:srv:root:ext4;x", `cmdline: root="nbd:srv:root:ext4;x": root.fstype: "ext4;x" is not a filesystem type`},
		{"nbdroot=srv/x root=/dev/nbdx", `cmdline: root="/dev/nbdx": "/dev/nbdx" is not an nbd device (want /dev/nbdN or /dev/nbdNpM)`},
		{"nbdroot=a/x root=nbd:b:x", `cmdline: root="nbd:b:x": sets server.servers = ["b:10809/x"], but nbdroot="a/x" sets server.servers = ["a:10809/x"]`},
		{"nbdroot=a,x,nbd1 nbddev=/dev/nbd2", `cmdline: nbddev="/dev/nbd2": sets device.index = 2, but nbdroot="a,x,nbd1" sets device.index = 1`},
		{"nbdroot=a/x ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:off", `cmdline: ip="10.0.0.5::10.0.0.1:255.0.255.0::eth0:off": netmask 255.0.255.0 is not contiguous`},
		{"nbdroot=a/x ip=10.0.0.300", `cmdline: ip="10.0.0.300": client address "10.0.0.300" is not an IP address`},
		{"nbdroot=a/x ip=dhpc", `cmdline: ip="dhpc": autoconf "dhpc" is not one of off, none, on, any, dhcp, bootp, both`},
		{"nbdroot=a/x ip=rarp", `cmdline: ip="rarp": autoconf rarp is not supported (use dhcp)`},
		{"nbdroot=a/x ip=1:2:3:4:5:6:7:8:9:10:11", `cmdline: ip="1:2:3:4:5:6:7:8:9:10:11": 11 fields; want at most 10 (CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0)`},
		{"nbdroot=a/x ip=240.0.0.1", `cmdline: ip="240.0.0.1": client address 240.0.0.1 has no address class; give a netmask`},
		{"nbdroot=a/x nbdroot.device.conections=4", `cmdline: nbdroot.device.conections="4": unknown key (did you mean nbdroot.device.connections?)`},
		{"nbdroot=a/x nbdroot.frobnicate=1", `cmdline: nbdroot.frobnicate="1": unknown key`},
		{"nbdroot=a/x nbdroot.device.block_size=3000", `cmdline: nbdroot.device.block_size="3000": 3000 is not a power of two between 512 and 4096`},
		{"nbdroot=a/x nbdroot.device.connections=0", `cmdline: nbdroot.device.connections="0": 0 is out of range 1-64`},
		{"nbdroot=a/x nbdroot.device.connections", `cmdline: nbdroot.device.connections: needs a value: nbdroot.device.connections=VALUE`},
		{"nbdroot=a/x nbdroot.server.connect_timeout=5", `cmdline: nbdroot.server.connect_timeout="5": "5" is not a duration (want e.g. "5s", "250ms", "2m")`},
		{"nbdroot=a/x nbdroot.server.connect_timeout=0s", `cmdline: nbdroot.server.connect_timeout="0s": 0s is not a positive duration`},
		{"nbdroot=a/x nbdroot.device.timeout=1500ms", `cmdline: nbdroot.device.timeout="1500ms": 1.5s is not a whole number of seconds (the kernel counts seconds)`},
		{"nbdroot=a/x nbdroot.device.read_only=maybe", `cmdline: nbdroot.device.read_only="maybe": "maybe" is not a boolean (want true or false)`},
		{"nbdroot=a/x nbdroot.tls.ca=ca.pem", `cmdline: nbdroot.tls.ca="ca.pem": "ca.pem" is not an absolute path`},
		{"nbdroot=a/x nbdroot.network.mode=fast", `cmdline: nbdroot.network.mode="fast": "fast" is not one of dhcp, static, none`},
		{"nbdroot=a/x nbdroot.network.dns=1.1.1.1,,8.8.8.8", `cmdline: nbdroot.network.dns="1.1.1.1,,8.8.8.8": "1.1.1.1,,8.8.8.8" has an empty element`},
		{"nbdroot=a/x nbdroot.tls.ca=/ca.pem nbdroot.tls.required=false", `cmdline: nbdroot.tls.ca="/ca.pem": tls.ca = "/ca.pem" needs TLS, but nbdroot.tls.required="false" sets tls.required = false`},
		{"nbdroot=nbds://a/x nbdroot.tls.required=false", `cmdline: nbdroot.tls.required="false": sets tls.required = false, but nbdroot="nbds://a/x" sets tls.required = true`},
		{"nbdroot=a/x nbdroot.tls.cert=/c.pem", `cmdline: nbdroot.tls.cert="/c.pem": tls.cert needs tls.key (the client certificate's private key)`},
		{"nbdroot=a/x nbdroot.device.read_only=true rw", `cmdline: rw: the root is to be mounted read-write, but device.read_only = true (cmdline: nbdroot.device.read_only=true) and root.overlay = "none": mount the root ro, or set root.overlay = "tmpfs"`},
		{"nbdroot=a/x nbdroot.network.mode=static", `cmdline: nbdroot.network.mode="static": network.mode = "static" needs network.address (e.g. "192.0.2.10/24", or ip=CLIENT:…)`},
		{"nbdroot=a/x ip=10.0.0.5 nbdroot.network.mode=dhcp", `cmdline: nbdroot.network.mode="dhcp": sets network.mode = "dhcp", but ip="10.0.0.5" sets network.mode = "static"`},
		{"nbdroot=dhcp ip=off", `cmdline: nbdroot="dhcp": the server comes from DHCP, but network.mode = "none" (cmdline: ip=off)`},
		{"nbdroot=a/x nbdroot.server.backoff_initial=10s", `cmdline: nbdroot.server.backoff_initial="10s": server.backoff_initial = 10s is longer than server.backoff_max = 5s (default)`},
		{"nbdroot.config=", `cmdline: nbdroot.config="": needs a path: nbdroot.config=PATH`},
		{"quiet console=ttyS0", `cmdline: no NBD server: add nbdroot=HOST:PORT/NAME (or root=nbd:HOST:PORT|NAME, or server.servers in the config file)`},
		{"nbdroot=a/x nbdroot.server.servers=dhcp,b/y", `cmdline: nbdroot.server.servers="dhcp,b/y": "dhcp": the server from DHCP's root-path cannot be combined with other servers`},
		{"nbdroot=a/x nbdroot=nbd://s/x?tls-hostname=a&tls-hostname=b", `cmdline: nbdroot="nbd://s/x?tls-hostname=a&tls-hostname=b": query key "tls-hostname" is given 2 times`},
		{"nbdroot=a/x nbdroot.root.init=sbin/init", `cmdline: nbdroot.root.init="sbin/init": "sbin/init" is not an absolute path`},
		{"nbdroot=srv:99999/x nbdroot.device.connections=0", "cmdline: nbdroot=\"srv:99999/x\": port 99999 is out of range 1-65535\n" +
			`cmdline: nbdroot.device.connections="0": 0 is out of range 1-64`},
		{"nbdroot=a/x rootflags=\"x\x01\"", `cmdline: rootflags="x\x01": "x\x01" contains a control character`},
		{"nbdroot=a/x init=/\xff", `cmdline: init="/\xff": value is not valid UTF-8`},
	}
	for _, tc := range tests {
		r, err := Resolve(Sources{Cmdline: tc.cmdline})
		if err == nil {
			t.Errorf("Resolve(%q) = %+v, want error %q", tc.cmdline, r.Spec, tc.want)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("Resolve(%q) error:\n got %s\nwant %s", tc.cmdline, err, tc.want)
		}
		if !IsSpecError(err) {
			t.Errorf("Resolve(%q): %v is not a spec error", tc.cmdline, err)
		}
	}
	if len(tests) < 25 {
		t.Errorf("only %d bad inputs", len(tests))
	}
}

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		in         string
		args, init []string
	}{
		{"", nil, nil},
		{"  a  b\tc\n", []string{"a", "b", "c"}, nil},
		{`a="b c" d`, []string{"a=b c", "d"}, nil},
		{`"a=b c" d`, []string{"a=b c", "d"}, nil},
		{`"a b" c`, []string{"a b", "c"}, nil},
		{`a=x"y z"w e`, []string{`a=x"y z"w`, "e"}, nil},
		{`a="unterminated b c`, []string{"a=unterminated b c"}, nil},
		{`a= b=`, []string{"a=", "b="}, nil},
		{`=x`, []string{"=x"}, nil},
		{`a -- b "c d" e=f`, []string{"a"}, []string{"b", "c d", "e=f"}},
		{`a -- b -- c`, []string{"a"}, []string{"b"}},
		{`"--" x`, nil, []string{"x"}},
		{`a --x`, []string{"a", "--x"}, nil},
		{"a\xa0b", []string{"a", "b"}, nil},
	}
	for _, tc := range tests {
		args, init := SplitCmdline(tc.in)
		if !reflect.DeepEqual(args, tc.args) || !reflect.DeepEqual(init, tc.init) {
			t.Errorf("SplitCmdline(%q) = %q, %q; want %q, %q", tc.in, args, init, tc.args, tc.init)
		}
	}
}

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in   string
		want Spec
	}{
		{"srv:2000/root", withServer(ep("srv", 2000, "root"), nil)},
		{"srv/root", withServer(ep("srv", DefaultPort, "root"), nil)},
		{"srv:/root", withServer(ep("srv", DefaultPort, "/root"), nil)},
		{"[::1]:2000/x", withServer(ep("::1", 2000, "x"), nil)},
		{"nbd://127.0.0.1:2000/a%3Fb", withServer(ep("127.0.0.1", 2000, "a?b"), nil)},
		{"nbds://srv/x?tls-hostname=h&tls-verify-peer=false", withServer(ep("srv", DefaultPort, "x"), func(s *Spec) {
			s.TLS.Enabled, s.TLS.ServerName, s.TLS.VerifyPeer = true, "h", false
		})},
		{"nbd+unix:///exp?socket=/run/nbd.sock", withServer(Endpoint{Export: "exp", Socket: "/run/nbd.sock"}, nil)},
		{"nbds+unix:///?socket=/s", withServer(Endpoint{Socket: "/s"}, func(s *Spec) { s.TLS.Enabled = true })},
	}
	for _, tc := range tests {
		got, err := ParseTarget(tc.in)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmpOpts); diff != "" {
			t.Errorf("ParseTarget(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
	bad := []struct{ in, want string }{
		{"", `argument: "": empty server (want HOST[:PORT]/NAME or nbd://HOST[:PORT]/NAME)`},
		{"dhcp/root", `argument: "dhcp/root": no host: only a booting machine knows its DHCP server; name the server`},
		{"srv:70000/x", `argument: "srv:70000/x": port 70000 is out of range 1-65535`},
		{"nbd+unix://host/x?socket=/s", `argument: "nbd+unix://host/x?socket=/s": nbd+unix:// takes no host (got "host"); the socket is ?socket=PATH`},
		{"nbd+unix:///x", `argument: "nbd+unix:///x": nbd+unix:// needs ?socket=PATH`},
		{"nbd://srv/x?socket=/s", `argument: "nbd://srv/x?socket=/s": socket= is only for nbd+unix:// URIs`},
		{"nbd://user@srv/x", `argument: "nbd://user@srv/x": user information (USER@) is not supported in NBD URIs`},
		{"nbd://srv/x#frag", `argument: "nbd://srv/x#frag": NBD URIs take no #fragment`},
	}
	for _, tc := range bad {
		_, err := ParseTarget(tc.in)
		var e *Error
		if err == nil || err.Error() != tc.want || !errors.As(err, &e) || e.Source != "argument" {
			t.Errorf("ParseTarget(%q) error = %v; want %s", tc.in, err, tc.want)
		}
	}
}

func TestEndpointString(t *testing.T) {
	for _, tc := range []struct {
		e    Endpoint
		want string
	}{
		{ep("srv", 10809, "root"), "srv:10809/root"},
		{ep("2001:db8::1", 2000, "/abs"), "[2001:db8::1]:2000//abs"},
		{Endpoint{HostFromDHCP: true, Port: 10809, Export: "x"}, "dhcp:10809/x"},
		{Endpoint{Socket: "/run/a b.sock", Export: "e"}, "nbd+unix:///e?socket=%2Frun%2Fa+b.sock"},
	} {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.e, got, tc.want)
		}
		back, err := ParseTarget(tc.want)
		if tc.e.HostFromDHCP {
			continue
		}
		if err != nil || !reflect.DeepEqual(back.Server.Endpoints[0], tc.e) {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", tc.want, back.Server.Endpoints, err, tc.e)
		}
	}
}

func TestOrigins(t *testing.T) {
	r, err := Resolve(Sources{Cmdline: `nbdroot=srv:10809/root "rootflags=a b" nbdroot.tls.ca=/ca.pem`})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"server.servers":    "cmdline: nbdroot=srv:10809/root",
		"root.flags":        `cmdline: rootflags="a b"`,
		"tls.required":      "implied by tls.ca (cmdline: nbdroot.tls.ca=/ca.pem)",
		"device.block_size": "default",
	} {
		if got := r.Origin[key]; got != want {
			t.Errorf("Origin[%q] = %q, want %q", key, got, want)
		}
	}
	if len(r.Origin) != len(keyTable()) {
		t.Errorf("Origin has %d keys, want %d", len(r.Origin), len(keyTable()))
	}
	f := r.Format()
	for _, want := range []string{
		"servers = [\"srv:10809/root\"]  # cmdline: nbdroot=srv:10809/root\n",
		"required = true",
		"# implied by tls.ca (cmdline: nbdroot.tls.ca=/ca.pem)\n",
	} {
		if !strings.Contains(f, want) {
			t.Errorf("Format() lacks %q:\n%s", want, f)
		}
	}
}

func TestParseRootPath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{"10.0.0.1:2000/root", withServer(ep("10.0.0.1", 2000, "root"), nil)},
		{":/root", withServer(Endpoint{HostFromDHCP: true, Port: DefaultPort, Export: "/root"}, nil)},
		{"srv,root,nbd2", withServer(ep("srv", DefaultPort, "root"), func(s *Spec) { s.Device.Index = 2 })},
		{"nbds://srv/x", withServer(ep("srv", DefaultPort, "x"), func(s *Spec) { s.TLS.Enabled = true })},
	} {
		got, err := ParseRootPath(tc.in)
		if err != nil {
			t.Errorf("ParseRootPath(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmpOpts); diff != "" {
			t.Errorf("ParseRootPath(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
	for in, want := range map[string]string{
		"dhcp":           `dhcp root-path: "dhcp": names no server`,
		"srv:99999/root": `dhcp root-path: "srv:99999/root": port 99999 is out of range 1-65535`,
	} {
		if _, err := ParseRootPath(in); err == nil || err.Error() != want {
			t.Errorf("ParseRootPath(%q) error %v, want %s", in, err, want)
		}
	}
}
