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
// The package is pure: no syscalls, no globals. It can be tested and fuzzed on
// any machine.
package config

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
// Its TOML form has one table per field ([server], [tls], [device],
// [network], [root], [boot]) and one snake_case key per field, named in each
// field's doc where the name differs from the Go name; docs/nbdroot.toml
// lists every key. Any key can also be set on the kernel command line as
// nbdroot.TABLE.KEY=VALUE.
type Spec struct {
	Server  Server
	TLS     TLS
	Device  Device
	Network Network
	Root    Root
	Boot    Boot
}

// Server says where the export is and how hard to try to reach it.
type Server struct {
	// Endpoints are tried in order on every connection attempt
	// (server.servers: a list of "HOST:PORT/NAME" or NBD URI strings).
	Endpoints []Endpoint
	// FromDHCP means the endpoint comes from the DHCP root-path option
	// (option 17), parsed with the nbdroot= grammar (Debian's `nbdroot=dhcp`;
	// in TOML, servers = ["dhcp"]). Endpoints is then empty.
	FromDHCP bool
	// ConnectTimeout bounds one TCP dial.
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds one NBD negotiation, TLS included.
	HandshakeTimeout time.Duration
	// Deadline bounds the whole connect phase across retries and servers.
	Deadline time.Duration
	// BackoffInitial and BackoffMax shape the exponential backoff (with
	// jitter) between rounds of attempts.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

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

// TLS configures STARTTLS. When Enabled, TLS is required: a server that
// refuses it is an error, never a downgrade.
//
// TOML: [tls] required, ca, cert, key, server_name, verify_peer. Input treats
// required as tri-state: unset means off unless a server is nbds:// or a
// TLS file is set; false with TLS files set is an error.
type TLS struct {
	// Enabled requires TLS (tls.required; nbds:// sets it).
	Enabled bool
	// CAFile is a PEM bundle of trusted CAs (tls.ca, an absolute path);
	// empty means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and key (tls.cert,
	// tls.key; optional, both or neither).
	CertFile string
	KeyFile  string
	// ServerName is the name checked in the server certificate; empty means
	// the endpoint's host.
	ServerName string
	// VerifyPeer checks the server's certificate (tls-verify-peer; default true).
	VerifyPeer bool
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
	// Index is N in /dev/nbdN (0..MaxIndex), or AutoIndex ("auto" in TOML).
	Index int
	// Interface is how the device is configured.
	Interface Interface
	// BlockSize is the logical block size, a power of two 512..4096, or 0 for
	// the server's preferred size ("auto" in TOML).
	BlockSize uint32
	// Timeout is the kernel's per-request timeout, whole seconds; 0 leaves
	// the kernel's.
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits for a reconnect after the link
	// dies (netlink only), whole seconds.
	DeadConnTimeout time.Duration
	// Connections is the number of sockets (multi-connection, netlink only),
	// 1..MaxConnections.
	Connections int
	// ReadOnly attaches the device read-only.
	ReadOnly bool
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
	Mode NetworkMode
	// Interfaces limits which links are used; empty means every link except
	// loopback, in kernel order.
	Interfaces []string
	// Address is the static address with prefix length (static mode,
	// required there; "192.0.2.10/24" in TOML).
	Address netip.Prefix
	// Gateway is the default route's next hop (static mode; optional).
	Gateway netip.Addr
	// DNS servers for resolv.conf.
	DNS []netip.Addr
	// Hostname, if set, is given to the kernel.
	Hostname string
	// LinkTimeout bounds the wait for carrier; DHCPTimeout bounds the lease.
	LinkTimeout time.Duration
	DHCPTimeout time.Duration
}

// Overlay modes for the root.
const (
	OverlayNone  = "none"
	OverlayTmpfs = "tmpfs"
)

// Root says how to mount the root and which init to run.
type Root struct {
	// FSType is the filesystem type (root.fstype, rootfstype=); empty (or
	// "auto" in input) means detect from the superblock.
	FSType string
	// Flags are filesystem-specific mount options (root.flags, rootflags=).
	Flags string
	// ReadOnly mounts the root read-only (the kernel's default, `ro`).
	ReadOnly bool
	// Partition is M in /dev/nbdNpM; 0 means the whole device.
	Partition int
	// Overlay is OverlayNone or OverlayTmpfs (a tmpfs upper layer over a
	// read-only root, for many clients sharing one export).
	Overlay string
	// Init is the path of the real init inside the root; empty means the
	// usual search (/sbin/init, /etc/init, /bin/init, /bin/sh).
	Init string
	// InitArgs are passed to the real init (kernel arguments after `--`).
	InitArgs []string
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
	// Modules are loaded in addition to the built-in list.
	Modules []string
	// OnFailure is one of FailShell, FailReboot, FailPoweroff, FailHalt.
	OnFailure string
	// FailureDelay is waited before reboot, poweroff or halt.
	FailureDelay time.Duration
	// LogLevel is "error", "info" or "debug".
	LogLevel string
}
