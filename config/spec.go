// Package config turns nbdroot's inputs — built-in defaults, a TOML file and
// the kernel command line — into one validated Spec.
//
// Every syntax users already type is accepted: nbdroot's own
// nbdroot=HOST:PORT/NAME, Debian initramfs-tools' nbdroot=/nbddev=/root=
// forms, dracut's root=nbd:…, NBD URIs (nbd://, nbds://, nbd+unix://), the
// kernel's ip=, and nbdroot.KEY=VALUE for any TOML key. Precedence per field is
// defaults < TOML < command line, and every resolved value remembers where it
// came from so `nbdroot config check` can say so.
//
// The package owns the schema of a boot: the Spec type, whose fields and
// struct tags are the single description of every key (its TOML name,
// default, check and command-line alias; docs/nbdroot.toml is generated from
// them), the grammars of the inputs, and the rules between keys
// (resolve.go). It is pure — no syscalls, no mutable globals (the key table
// is derived from Spec once) — so it can be tested and fuzzed on any
// machine. It imports only the standard library, BurntSushi/toml and nbddev,
// whose device rules (index range, block size) it checks a spec against.
package config

//go:generate go test -run TestExampleFileGenerated -update

import (
	"net/netip"
	"time"
)

// DefaultPort is the IANA-assigned NBD port.
const DefaultPort = 10809

// Spec is everything nbdroot needs to find, attach and mount its root.
// The zero value is not useful; obtain one from Defaults, Resolve or
// ParseTarget.
//
// Its TOML form has one table per field and one key per field of that
// table, described by the field's tags: toml is the key's name, default its
// default in the text form of nbdroot.KEY=VALUE (none: the zero value),
// check the named check its values pass (schema.go), auto the value "auto"
// stands for, and cmdline a kernel argument that sets the key too. Every
// key can be set on the kernel command line as nbdroot.TABLE.KEY=VALUE and
// with Spec.Set. The fields' docs are the keys' user documentation:
// docs/nbdroot.toml is generated from them.
type Spec struct {
	Server  Server  `toml:"server"`
	TLS     TLS     `toml:"tls"`
	Device  Device  `toml:"device"`
	Network Network `toml:"network"`
	Root    Root    `toml:"root"`
	Boot    Boot    `toml:"boot"`
}

// Server says where the export is and how hard to try to reach it.
type Server struct {
	// NBD servers, tried in order on every connection attempt. Each entry
	// uses the same grammar as nbdroot= on the command line and
	// `nbdroot probe`:
	//   "HOST:PORT/NAME", "HOST/NAME" (port 10809), "HOST:/NAME" (export
	//   "/NAME"), "[2001:db8::1]:10809/NAME", "nbd://HOST[:PORT]/NAME"
	//   (percent-encoded), "nbds://HOST/NAME" (TLS required),
	//   "...?tls-hostname=H&tls-verify-peer=false".
	// "dhcp" alone takes the server from the DHCP root-path option (17);
	// "dhcp" as the host ("dhcp:10809/root") means the DHCP server.
	Endpoints []Endpoint `toml:"servers"`
	// FromDHCP means the endpoint comes from the DHCP root-path option
	// (option 17), parsed with the nbdroot= grammar (servers = ["dhcp"]).
	// Endpoints is then empty.
	FromDHCP bool `toml:"-"`
	// Bounds one TCP dial.
	ConnectTimeout time.Duration `toml:"connect_timeout" check:"positive" default:"5s"`
	// Bounds one NBD negotiation, TLS included.
	HandshakeTimeout time.Duration `toml:"handshake_timeout" check:"positive" default:"10s"`
	// Bounds the whole connect phase, across retries and servers.
	Deadline time.Duration `toml:"deadline" check:"positive" default:"5m"`
	// First delay of the exponential backoff (with jitter) between rounds of
	// attempts; at most backoff_max.
	BackoffInitial time.Duration `toml:"backoff_initial" check:"positive" default:"250ms"`
	// Cap of the backoff between rounds of attempts.
	BackoffMax time.Duration `toml:"backoff_max" check:"positive" default:"5s"`
	// Where each round of attempts starts among the servers: "listed"
	// tries them in the order given, as nbd-client and dracut do (a
	// primary and its standby); "spread" starts at a server chosen from the
	// machine's own identity (its NIC's MAC address), so that a lab of
	// machines booting together spreads over the servers instead of piling
	// onto the first. Listing several servers asserts that they serve the
	// same data: a keeper fails over among them.
	Order Order `toml:"order" check:"order" default:"listed"`
}

// Order is how a round of connection attempts walks the servers.
type Order string

// Server orders.
const (
	OrderListed Order = "listed"
	OrderSpread Order = "spread"
)

// Endpoint is one NBD server and export.
type Endpoint struct {
	// Host is a DNS name or an IP literal (no brackets). Empty with
	// HostFromDHCP means the DHCP server's address.
	Host string
	// HostFromDHCP means Host is the DHCP server (Debian: empty or "dhcp" host
	// in the root-path).
	HostFromDHCP bool
	// Port is the TCP port; DefaultPort when the input names none.
	Port uint16
	// Export is the export name; empty selects the server's default export.
	Export string
	// Socket is a Unix socket path (nbd+unix://); valid for probe, list and
	// attach on a running system, never for boot.
	Socket string
}

// TLS configures STARTTLS. When TLS is required, a server that refuses it
// is an error, never a downgrade.
type TLS struct {
	// Require STARTTLS. Unset: off, unless a server is nbds://… or
	// ca/cert/key is set (then on). Setting it to false while ca/cert/key
	// are set is an error.
	Enabled bool `toml:"required"`
	// PEM bundle of trusted CAs (absolute path); "" means the system roots.
	CAFile string `toml:"ca" check:"abspath"`
	// Client certificate for servers that verify clients (absolute path);
	// needs key.
	CertFile string `toml:"cert" check:"abspath"`
	// The client certificate's private key (absolute path); needs cert.
	KeyFile string `toml:"key" check:"abspath"`
	// Name checked in the server's certificate; "" means the server's host.
	ServerName string `toml:"server_name" check:"servername"`
	// Check the server's certificate (the URI's tls-verify-peer).
	VerifyPeer bool `toml:"verify_peer" default:"true"`
}

// Interface names a kernel interface for attaching the device.
type Interface string

// Kernel interfaces.
const (
	InterfaceAuto    Interface = "auto"
	InterfaceNetlink Interface = "netlink"
	InterfaceIoctl   Interface = "ioctl"
)

// AutoIndex asks for the first free /dev/nbdN.
const AutoIndex = -1

// Device configures the /dev/nbdN the root is attached to.
type Device struct {
	// N in /dev/nbdN (0-65535), or "auto" (stored as AutoIndex) for the
	// first free device. Command line: nbddev=/dev/nbdN, root=/dev/nbdN[pM],
	// nbdroot=HOST,NAME,nbdN.
	Index int `toml:"index" check:"index" auto:"-1" default:"auto"`
	// How the device is configured: "auto" (netlink when the kernel has
	// it), "netlink" or "ioctl".
	Interface Interface `toml:"interface" check:"interface" default:"auto"`
	// Logical block size: "auto" (stored as 0), the server's preferred size,
	// or a power of two from 512 to 4096.
	BlockSize uint32 `toml:"block_size" check:"blocksize" auto:"0"`
	// The kernel's per-request timeout, whole seconds; "0s" keeps the
	// kernel's.
	Timeout time.Duration `toml:"timeout" check:"seconds"`
	// How long I/O waits for a reconnect after the connection dies
	// (netlink), whole seconds.
	DeadConnTimeout time.Duration `toml:"dead_conn_timeout" check:"seconds" default:"2m"`
	// Sockets per device (multi-connection, netlink), 1-64.
	Connections int `toml:"connections" check:"connections" default:"1"`
	// Attach the device read-only. A read-only device with a read-write
	// root needs overlay = "tmpfs".
	ReadOnly bool `toml:"read_only"`
	// The device holds swap (a swap partition, or a swap file on its
	// file system): the keeper locks itself in memory, as nbd-client's
	// -swap does, so that it never waits on the device it serves to page
	// itself back in. The keeper's whole binary then stays resident, and
	// its heap is never given back. Command line: the NBD option swap.
	Swap bool `toml:"swap"`
}

// NetworkMode says how the network is configured.
type NetworkMode string

// Network modes.
const (
	NetworkDHCP   NetworkMode = "dhcp"
	NetworkStatic NetworkMode = "static"
	NetworkNone   NetworkMode = "none"
)

// Network configures the interface the server is reached through.
type Network struct {
	// "dhcp", "static" (needs address) or "none". Command line: ip=dhcp,
	// ip=off, ip=CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0.
	Mode NetworkMode `toml:"mode" check:"mode" default:"dhcp"`
	// Interfaces to use; [] means every link but loopback, in kernel order.
	Interfaces []string `toml:"interfaces" check:"ifname"`
	// Static address with prefix length ("192.0.2.10/24"); static mode only.
	Address netip.Prefix `toml:"address"`
	// Default route's next hop (static mode); "" for none.
	Gateway netip.Addr `toml:"gateway"`
	// DNS servers for resolv.conf (static mode; DHCP supplies its own).
	DNS []netip.Addr `toml:"dns"`
	// Host name given to the kernel; "" leaves it alone.
	Hostname string `toml:"hostname" check:"hostname"`
	// Wait for carrier at most this long.
	LinkTimeout time.Duration `toml:"link_timeout" check:"positive" default:"10s"`
	// Wait for a DHCP lease at most this long.
	DHCPTimeout time.Duration `toml:"dhcp_timeout" check:"positive" default:"30s"`
}

// Overlay modes for the root.
const (
	OverlayNone  = "none"
	OverlayTmpfs = "tmpfs"
)

// Root says how to mount the root and which init to run.
type Root struct {
	// Filesystem type; "" (or "auto" in input) detects it from the
	// superblock.
	FSType string `toml:"fstype" check:"fstype" cmdline:"rootfstype"`
	// Filesystem-specific mount options.
	Flags string `toml:"flags" check:"nocontrol" cmdline:"rootflags"`
	// Mount the root read-only (the kernel's default; a bare `rw` on the
	// command line clears it, `ro` sets it).
	ReadOnly bool `toml:"read_only" default:"true"`
	// M in /dev/nbdNpM; 0 mounts the whole device. Command line:
	// root=/dev/nbd0p1.
	Partition int `toml:"partition" check:"partition"`
	// "none", or "tmpfs": a tmpfs upper layer over the read-only root, so
	// many clients can share one export.
	Overlay string `toml:"overlay" check:"overlay" default:"none"`
	// The real init inside the root; "" searches /sbin/init, /etc/init,
	// /bin/init, /bin/sh.
	Init string `toml:"init" check:"abspath" cmdline:"init"`
	// Arguments for the real init. Command line: the words after `--`.
	InitArgs []string `toml:"init_args"`
}

// Failure actions.
const (
	FailShell    = "shell"
	FailReboot   = "reboot"
	FailPoweroff = "poweroff"
	FailHalt     = "halt"
)

// Boot configures the boot sequence itself.
type Boot struct {
	// Kernel modules loaded in addition to the built-in list.
	Modules []string `toml:"modules" check:"module"`
	// What to do when the boot fails: "shell", "reboot", "poweroff" or
	// "halt".
	OnFailure string `toml:"on_failure" check:"on_failure" default:"shell"`
	// Wait this long before reboot, poweroff or halt.
	FailureDelay time.Duration `toml:"failure_delay" check:"nonnegative" default:"10s"`
	// "error", "info" or "debug".
	LogLevel string `toml:"log_level" check:"log_level" default:"info"`
}

// Debug reports whether log_level asks for debug lines.
func (b Boot) Debug() bool { return b.LogLevel == "debug" }
