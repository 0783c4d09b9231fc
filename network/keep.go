package network

import (
	"context"
	"sync"

	"github.com/nbdroot/nbdroot/bootlog"
)

// KeepOptions are Keep's knobs; the zero value is the keeper's.
type KeepOptions struct {
	// OnChange, if set, is called with each new lease the Renewer takes.
	OnChange func(*Lease)
}

// Keep keeps lease for as long as ctx lasts: a Guard restores the link,
// address and default route whenever they are taken away, and, for a DHCP
// lease, a Renewer renews it. It needs only rtnetlink and the link, so it
// runs the same in PID 1 and in a keeper whose root is not the new root. It
// returns when ctx is done, also with nothing to keep (no network).
func Keep(ctx context.Context, log *bootlog.Logger, lease *Lease, o KeepOptions) error {
	if lease.Interface == "" || !lease.Address.IsValid() {
		<-ctx.Done() // nothing to keep; a keeper's duties end together
		return ctx.Err()
	}
	current := func() *Lease { l := *lease; return &l }
	var rerequest func()
	var wg sync.WaitGroup
	if lease.DHCP {
		r := NewRenewer(log, lease, o.OnChange)
		current, rerequest = r.Lease, r.Rerequest
		wg.Go(func() { _ = r.Run(ctx) })
	}
	g := NewGuard(log, current, rerequest)
	wg.Go(func() { _ = g.Run(ctx) })
	wg.Wait()
	return ctx.Err()
}
