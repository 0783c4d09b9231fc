// Package poll waits for a condition that no event announces (a sysfs file
// appearing, a carrier bit, a process exiting) by checking it at an interval,
// and gives up when its context is done. It is the one sleep-and-check loop
// of nbdroot; every such wait goes through it so that none ignores its
// context.
package poll

import (
	"context"
	"time"
)

// Until calls cond every interval until it reports done, returns an error,
// or ctx is done. cond runs once at once. Until returns nil when cond was
// satisfied, cond's error, or ctx.Err() (context.DeadlineExceeded when a
// deadline passed) together with nothing else: callers word the timeout in
// their own terms.
func Until(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := cond()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// For is Until with a timeout of its own on top of ctx.
func For(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return Until(ctx, interval, cond)
}
