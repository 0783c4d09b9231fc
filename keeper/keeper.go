package keeper

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/ioctl"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/negotiate"
	"github.com/nbdroot/nbdroot/netlink"
	"github.com/nbdroot/nbdroot/network"
)

// reconnectBackoffMax caps the backoff between reconnect attempts.
const reconnectBackoffMax = time.Second

// refusedRetry is the pause before reconnecting to servers that all refused.
const refusedRetry = 10 * time.Second

// keeper is the state of one keeper process.
type keeper struct {
	log    *bootlog.Logger
	step   string // the log's step: "keeper nbdN"
	spec   config.Spec
	dev    int
	sys    nbddev.Sysfs
	dir    RunDir
	lease  *network.Lease // the root's network to keep, or nil
	status *os.File       // the pipe to the starter, until the report is sent
	// initramfs, for the root's keeper, is freed once the root's init runs
	// (freeLater), after a Ready report.
	initramfs *initramfsAfterSwitch
	// startup is the keeper's own start (fork to main), for the report.
	startup time.Duration
	state   State
	// exportSize and exportFlags are the export's at the first attach: a
	// reconnect must find the same size, and a read-write device the same
	// flags (another server too: listing several asserts they serve the
	// same data).
	exportSize  uint64
	exportFlags negotiate.Flags
}

// A duty is one job of an attached keeper. It runs in a goroutine of its
// own and returns when ctx ends (or when its job is over).
type duty func(ctx context.Context) error

// runDuties runs the duties under one context, which ends with ctx or as
// soon as any duty returns; it waits for all and returns the first
// duty's error. Nil duties are skipped.
func runDuties(ctx context.Context, duties ...duty) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(duties))
	n := 0
	for _, d := range duties {
		if d != nil {
			n++
			go func() { errs <- d(ctx) }()
		}
	}
	var first error
	for i := range n {
		err := <-errs
		if i == 0 {
			first = err
			cancel()
		}
	}
	return first
}

// report sends the one Report to the starter and closes the pipe.
func (k *keeper) report(rep Report) {
	if k.status == nil {
		return
	}
	rep.Device, rep.Pid, rep.Startup = k.dev, os.Getpid(), k.startup
	b, _ := json.Marshal(rep)
	_, _ = k.status.Write(append(b, '\n'))
	k.status.Close()
	k.status = nil
	// What the start allocated (the TLS handshake, the spec's JSON, the
	// first DHCP and netlink exchanges) is garbage from here on: give it
	// back to the kernel now rather than at the scavenger's pace. The
	// root's keeper does it once the root's init runs, with the
	// initramfs (freeLater): a collection now would take the boot's one
	// CPU from PID 1's mount.
	if rep.Ready && k.initramfs != nil {
		k.freeLater(k.initramfs)
		k.initramfs = nil
		return
	}
	debug.FreeOSMemory()
	k.logMemory()
}

// fail is the keeper's failure in step op; it tells the starter, if the
// device never became ready.
func (k *keeper) fail(op string, err error) error {
	k.report(Report{Op: op, Error: err.Error()})
	return &Error{Op: op, Err: err}
}

// attachment is what the connect step hands the serve duty.
type attachment struct {
	nl     *netlink.Client // nil with the ioctl interface
	exp    *negotiate.Export
	conns  []net.Conn
	params ioctl.Params
	again  *dial.Dialer // for reconnecting
	ready  func(attach time.Duration)
}

// run connects through d, then serves the device and does the keeper's other duties
// (keeping the root's network) until ctx ends or the device is gone. Its
// errors are *Error.
func (k *keeper) run(ctx context.Context, d *dial.Dialer) error {
	defer k.report(Report{Op: "keeper", Error: "stopped before the device was ready"})
	k.dir.Claim(k.dev, os.Getpid())
	_ = os.Chdir("/")
	d = d.WithIdentity(k.identity())
	iface, nl, err := k.chooseInterface()
	if err != nil {
		return k.fail("attach", err)
	}
	k.log.Debugf(k.step, "interface %s", iface)
	if nl != nil {
		defer nl.Close()
	}
	a, err := k.connect(ctx, d, iface)
	if err != nil {
		return err
	}
	a.nl = nl
	serve := func(ctx context.Context) error {
		if nl != nil {
			return k.serveNetlink(ctx, a)
		}
		return k.serveIoctl(ctx, a)
	}
	var keepNetwork duty
	if k.lease != nil {
		keepNetwork = func(ctx context.Context) error {
			err := network.Keep(ctx, k.log, k.lease, network.KeepOptions{OnChange: func(*network.Lease) { k.settle() }})
			if ctx.Err() != nil {
				return nil // the keeper is stopping: not this duty's failure
			}
			return err
		}
	}
	if err := runDuties(ctx, serve, keepNetwork); err != nil {
		if k.status != nil { // not reported ready: the attach failed
			return k.fail("attach", err)
		}
		return &Error{Op: "serve", Err: err}
	}
	return nil
}

// connect reaches the export through d and derives the device's
// parameters. Its errors are *Error.
func (k *keeper) connect(ctx context.Context, d *dial.Dialer, iface config.Interface) (*attachment, error) {
	t0 := time.Now()
	exp, conns, ep, err := k.dialAll(ctx, d, iface)
	if err != nil {
		return nil, k.fail("connect", err)
	}
	params, err := kernelParams(k.spec.Device, exp)
	if err != nil {
		closeAll(conns)
		return nil, k.fail("attach", err)
	}
	k.exportSize, k.exportFlags = exp.Size, exp.Flags
	k.state = State{
		Device: nbddev.Path(k.dev), Index: k.dev, Server: ep.Server(), Export: exp.Name,
		Size: params.Size, BlockSize: params.BlockSize, Interface: iface, Connections: len(conns),
		TLS: k.spec.TLS.Enabled, Pid: os.Getpid(), Since: time.Now(),
	}
	k.log.Printf(k.step, "%s: %d bytes, flags %s, via %s, %d connection(s), %s%s", ep, exp.Size, exp.Flags, exp.Path, len(conns), iface, tlsNote(exp))
	return &attachment{
		exp: exp, conns: conns, params: params,
		// A root device has nowhere else to go: once attached, reconnect
		// until the server comes back, trying at least every
		// reconnectBackoffMax so that I/O resumes soon after it does
		// (jitter still spreads a fleet).
		again: d.Persistent(reconnectBackoffMax),
		ready: func(attach time.Duration) {
			_ = k.dir.Publish(k.state)
			setQueueLimits(k.log, k.step, k.sys, k.dev, exp)
			k.report(Report{Ready: true, Endpoint: ep.String(), Export: exp, Connect: time.Since(t0) - attach, Attach: attach})
		},
	}, nil
}

// chooseInterface resolves device.interface: "auto" is netlink where the
// kernel has the nbd family, ioctl otherwise.
func (k *keeper) chooseInterface() (config.Interface, *netlink.Client, error) {
	want := k.spec.Device.Interface
	if want == config.InterfaceIoctl {
		return want, nil, nil
	}
	nl, err := netlink.Dial()
	if err == nil {
		return config.InterfaceNetlink, nl, nil
	}
	if want == config.InterfaceNetlink {
		return "", nil, fmt.Errorf("device.interface is netlink: %w", err)
	}
	k.log.Printf(k.step, "netlink unavailable (%v); using ioctl", err)
	return config.InterfaceIoctl, nil, nil
}

// dialAll reaches the export and opens the extra connections of a
// multi-connection device: device.connections when the server allows it
// (NBD_FLAG_CAN_MULTI_CONN) and the interface is netlink, one otherwise.
func (k *keeper) dialAll(ctx context.Context, d *dial.Dialer, iface config.Interface) (*negotiate.Export, []net.Conn, config.Endpoint, error) {
	exp, conn, ep, err := d.Connect(ctx, k.log)
	if err != nil {
		return nil, nil, ep, err
	}
	conns := []net.Conn{conn}
	want := k.spec.Device.Connections
	switch {
	case want <= 1:
	case iface != config.InterfaceNetlink:
		k.log.Printf(k.step, "one connection, not %d: multi-connection needs the netlink interface", want)
	case !exp.Flags.Has(negotiate.FlagCanMultiConn):
		k.log.Printf(k.step, "one connection, not %d: the server does not allow multiple connections (no CAN_MULTI_CONN)", want)
	default:
		for len(conns) < want {
			more, c, err := d.Dial(ctx, ep)
			if err == nil && more.Size != exp.Size {
				c.Close()
				err = fmt.Errorf("export size %d differs from the first connection's %d", more.Size, exp.Size)
			}
			if err != nil {
				k.log.Errorf(k.step, "connection %d of %d: %v; going on with %d", len(conns)+1, want, err, len(conns))
				break
			}
			conns = append(conns, c)
		}
	}
	return exp, conns, ep, nil
}

// settleDelay is how long after an event settle gives memory back: long
// enough for the kernel to have the new socket and I/O to flow again.
const settleDelay = time.Second

// settle gives the heap that an event (a reconnect and its TLS handshake,
// a DHCP renewal) leaves behind back to the kernel, a moment later and off
// the path that resumes I/O: the keeper otherwise holds it until the
// runtime's scavenger gets to it, for as long as the machine runs.
func (k *keeper) settle() {
	time.AfterFunc(settleDelay, func() {
		debug.FreeOSMemory()
		k.logMemory()
	})
}

// logMemory logs, in debug mode, what the Go runtime holds: the heap, the
// stacks and the runtime's own structures (span records, GC metadata,
// the rest), as obtained from the kernel, which bounds what is resident.
func (k *keeper) logMemory() {
	if !k.spec.Boot.Debug() {
		return
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	k.log.Debugf(k.step, "memory: heap %d KiB in use of %d KiB (%d KiB released), stacks %d KiB (%d in use, %d goroutines), runtime %d KiB (spans %d, GC %d, other %d), objects %d, GCs %d",
		m.HeapInuse>>10, m.HeapSys>>10, m.HeapReleased>>10, m.StackSys>>10, m.StackInuse>>10, runtime.NumGoroutine(),
		(m.Sys-m.HeapSys-m.StackSys)>>10, m.MSpanSys>>10, m.GCSys>>10, (m.OtherSys+m.MCacheSys+m.BuckHashSys)>>10, m.HeapObjects, m.NumGC)
}

// reconnect dials until the export answers again with the same size, and
// returns the connection, or an error once ctx ends. It never gives up on
// its own: the device has nowhere else to go. A server that refuses (say, an
// export not configured yet after a restart) or that offers a different size
// (a different export behind the same name must not be attached under a
// mounted filesystem) is logged loudly and tried again, more slowly.
func (k *keeper) reconnect(ctx context.Context, d *dial.Dialer) (net.Conn, error) {
	for {
		exp, conn, ep, err := d.Connect(ctx, k.log)
		if err == nil {
			if err = k.sameExport(ep, exp); err == nil {
				if ep.Server() != k.state.Server {
					k.log.Printf(k.step, "failed over from %s to %s", k.state.Server, ep.Server())
					k.state.Server = ep.Server()
				}
				k.settle()
				return conn, nil
			}
			conn.Close()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		k.log.Errorf(k.step, "reconnect: %v; trying again in %v", err, refusedRetry)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(refusedRetry):
		}
	}
}

// sameExport checks that exp, reached at ep on a reconnect, is the export
// the device was attached to: the same size, and for a read-write device
// the same transmission flags.
func (k *keeper) sameExport(ep config.Endpoint, exp *negotiate.Export) error {
	if exp.Size != k.exportSize {
		return fmt.Errorf("%s: export size changed from %d to %d bytes; refusing to reattach", ep, k.exportSize, exp.Size)
	}
	if !k.spec.Device.ReadOnly && exp.Flags != k.exportFlags {
		return fmt.Errorf("%s: export flags changed from %s to %s on a read-write device; refusing to reattach", ep, k.exportFlags, exp.Flags)
	}
	return nil
}

// identity is what server.order = "spread" picks a server by: the root
// NIC's MAC address, or the host name for a device attached on a running
// system.
func (k *keeper) identity() []byte {
	if k.lease != nil {
		if mac, err := net.ParseMAC(k.lease.HardwareAddr); err == nil {
			return mac
		}
	}
	h, _ := os.Hostname()
	return []byte(h)
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// tlsNote describes the TLS session for the log, or "" without TLS.
func tlsNote(exp *negotiate.Export) string {
	if exp.TLSVersion == 0 {
		return ""
	}
	return ", " + tls.VersionName(exp.TLSVersion) + " " + tls.CipherSuiteName(exp.TLSCipher)
}
