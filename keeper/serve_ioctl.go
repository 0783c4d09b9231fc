package keeper

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/poll"
	"github.com/nbdroot/nbdroot/ioctl"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/negotiate"
)

// serveIoctl attaches conn through the ioctl interface and runs DO_IT; when
// DO_IT returns without a detach request the connection was lost, and it
// dials again and reattaches. Requests issued between the loss and the
// reattach fail: the ioctl interface cannot queue them (README.md says what
// that means for the filesystem). And the kernel (6.1) restarts the device
// only once nobody holds it open: a mounted device stays dead, so the keeper
// waits for it to be released instead of dialling in vain.
func (k *keeper) serveIoctl(ctx context.Context, a *attachment) error {
	conn := a.conns[0]
	for round := 0; ; round++ {
		err := k.doIt(conn, a.params, func(attach time.Duration) {
			if round == 0 {
				a.ready(attach)
				return
			}
			k.state.Reconnects++
			_ = k.dir.Publish(k.state)
			k.log.Printf(k.step, "reattached to %s (reconnect %d)", k.state.Server, k.state.Reconnects)
		})
		if err != nil && round == 0 && k.status != nil {
			return err
		}
		if k.dir.StopRequested(k.dev) || ctx.Err() != nil {
			k.log.Printf(k.step, "disconnected on request")
			return nil
		}
		if err == nil {
			err = errors.New("DO_IT returned: the server closed the connection")
		}
		k.log.Errorf(k.step, "connection lost (%v)", err)
		if k.sys.InUse(k.dev) {
			k.log.Errorf(k.step, "the kernel cannot restart %s while it is open (mounted?): the ioctl interface cannot reconnect it; I/O fails until it is released (device.interface=netlink keeps it alive)", nbddev.Path(k.dev))
			_ = poll.Until(ctx, time.Second, func() (bool, error) { return !k.sys.InUse(k.dev) || k.dir.StopRequested(k.dev), nil })
			if k.dir.StopRequested(k.dev) || ctx.Err() != nil {
				return nil
			}
		}
		k.log.Printf(k.step, "reconnecting")
		if conn, err = k.reconnect(ctx, a.again); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// doIt hands conn to the kernel and runs DO_IT until the device stops.
// live is called once the kernel has started the device.
func (k *keeper) doIt(conn net.Conn, p ioctl.Params, live func(attach time.Duration)) error {
	t0 := time.Now()
	sock, release, err := kernelSocket(conn)
	if err != nil {
		return err
	}
	defer release()
	dev, err := ioctl.Open(k.dev)
	if err != nil {
		return err
	}
	defer dev.Close()
	configured := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- dev.Serve(sock, p, func() { close(configured) }) }()
	select {
	case err := <-done:
		return err
	case <-configured:
	}
	// DO_IT starts the device from the other thread; wait until it is live.
	for !k.sys.Live(k.dev) {
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Millisecond):
		}
	}
	live(time.Since(t0))
	return <-done
}

// kernelParams derives the device parameters from the spec and the export.
func kernelParams(d config.Device, exp *negotiate.Export) (ioctl.Params, error) {
	// By default the server's minimum, at least 512. Not its preferred
	// size: a logical block size above the filesystem's block size makes
	// the mount fail (ext4 on a small image uses 1 KiB blocks), while
	// request sizes come from the queue limits, not from this.
	bs := cmp.Or(d.BlockSize, max(512, exp.MinBlock))
	if exp.MinBlock != 0 && bs < exp.MinBlock {
		return ioctl.Params{}, fmt.Errorf("block size %d is below the server's minimum %d", bs, exp.MinBlock)
	}
	if exp.Size < uint64(bs) {
		return ioctl.Params{}, fmt.Errorf("export of %d bytes is smaller than one %d-byte block", exp.Size, bs)
	}
	flags := exp.Flags
	if d.ReadOnly {
		flags |= negotiate.FlagReadOnly // the kernel makes the disk read-only
	}
	return ioctl.Params{
		Size:      exp.Size - exp.Size%uint64(bs),
		BlockSize: bs,
		Flags:     uint16(flags),
		Timeout:   d.Timeout,
		ReadOnly:  d.ReadOnly,
	}, nil
}
