package keeper

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/netlink"
)

// defaultNetlinkTimeout is the request timeout of a netlink device whose
// spec leaves device.timeout at 0. The kernel resends a request that was in
// flight when its connection died only once the request times out, so an
// unset timeout (the kernel's 30 s) would stall I/O that long after every
// server restart. A request that outlives it on a live but slow server costs
// a reconnect, not an error.
const defaultNetlinkTimeout = 3 * time.Second

// serveNetlink attaches conns through the netlink interface and keeps the
// device connected: on every link-dead event for the device it dials again
// and hands the kernel the new socket with RECONFIGURE. With a
// dead-connection timeout the kernel queues I/O meanwhile, so no request
// fails while the server is away for less than that.
func (k *keeper) serveNetlink(ctx context.Context, a *attachment) error {
	nl, p := a.nl, a.params
	// Subscribe before CONNECT: a link that dies at once must not go
	// unnoticed.
	events, err := nl.WatchLinkDead(ctx)
	if err != nil {
		closeAll(a.conns)
		return err
	}
	t0 := time.Now()
	var socks []int
	var releases []func()
	releaseAll := func() {
		for _, r := range releases {
			r()
		}
	}
	for _, c := range a.conns {
		s, release, err := kernelSocket(c)
		if err != nil {
			releaseAll()
			return err
		}
		socks, releases = append(socks, s), append(releases, release)
	}
	timeout := cmp.Or(p.Timeout, defaultNetlinkTimeout)
	// The kernel insists on the same backend identifier in every
	// RECONFIGURE; it also shows in /sys/block/nbdN/backend.
	backend := "nbdroot " + k.state.Server + "/" + a.exp.Name
	idx, err := nl.Connect(netlink.Config{
		Index: k.dev, Sockets: socks, Size: p.Size, BlockSize: uint64(p.BlockSize),
		ServerFlags: uint64(p.Flags), Timeout: timeout, DeadConnTimeout: k.spec.Device.DeadConnTimeout,
		BackendID: backend,
	})
	// The kernel holds its own references to the sockets.
	releaseAll()
	if err != nil {
		return err
	}
	if idx != k.dev {
		return errors.New("the kernel connected another device than asked")
	}
	k.log.Debugf(k.step, "NBD_CMD_CONNECT done in %.3fs", time.Since(t0).Seconds())
	a.ready(time.Since(t0))
	for {
		var ev netlink.LinkDead
		var ok bool
		select {
		case <-ctx.Done():
			k.log.Printf(k.step, "detached on request")
			return nil
		case ev, ok = <-events:
		}
		if !ok {
			if ctx.Err() != nil {
				continue
			}
			if events, err = nl.WatchLinkDead(ctx); err != nil {
				return err
			}
			continue
		}
		if ev.Index != k.dev && ev.Index != -1 {
			continue
		}
		if k.dir.StopRequested(k.dev) {
			continue // detach disconnected us; its signal follows
		}
		lost := time.Now()
		k.log.Errorf(k.step, "connection to %s lost; I/O waits up to %v for a new one", k.state.Server, k.spec.Device.DeadConnTimeout)
		if err := k.replaceSocket(ctx, nl, a.again, backend); err != nil {
			if ctx.Err() != nil {
				k.log.Printf(k.step, "detached on request")
				return nil
			}
			return err
		}
		k.state.Reconnects++
		_ = k.dir.Publish(k.state)
		k.log.Printf(k.step, "reconnected to %s after %.2fs (reconnect %d)", k.state.Server, time.Since(lost).Seconds(), k.state.Reconnects)
	}
}

// replaceSocket dials until the export answers and gives the kernel the new
// socket in place of the dead one.
func (k *keeper) replaceSocket(ctx context.Context, nl *netlink.Client, d *dial.Dialer, backend string) error {
	for {
		conn, err := k.reconnect(ctx, d)
		if err != nil {
			return err
		}
		sock, release, err := kernelSocket(conn)
		if err != nil {
			return err
		}
		err = nl.Reconfigure(k.dev, netlink.Reconfig{Sockets: []int{sock}, BackendID: backend})
		release()
		if err == nil {
			return nil
		}
		k.log.Errorf(k.step, "%v; retrying", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}
