package dial

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/negotiate"
)

// Connect reaches the export: it tries spec's endpoints in order (from the
// one WithIdentity picked, with server.order "spread"), round after round, with exponential backoff and jitter between rounds
// (Server.BackoffInitial doubling up to Server.BackoffMax), until one
// negotiates or Server.Deadline passes. Every failed attempt is logged with
// its cause. An endpoint whose server refused outright (an NBD error reply
// such as an unknown export, or a certificate that does not verify) is not
// retried: waiting will not change its answer. Its errors say why it gave
// up, wrapping the last attempt's *Error; the caller names the step.
func (d *Dialer) Connect(ctx context.Context, log *bootlog.Logger) (*negotiate.Export, net.Conn, config.Endpoint, error) {
	spec := d.spec
	if len(spec.Server.Endpoints) == 0 {
		return nil, nil, config.Endpoint{}, errors.New("no server configured (nbdroot=HOST:PORT/NAME)")
	}
	if spec.Server.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.Server.Deadline)
		defer cancel()
	}
	refused := make([]bool, len(spec.Server.Endpoints))
	var last error
	backoff := spec.Server.BackoffInitial
	for attempt := 1; ; attempt++ {
		alive := 0
		for j := range spec.Server.Endpoints {
			i := (d.start + j) % len(spec.Server.Endpoints)
			ep := spec.Server.Endpoints[i]
			if refused[i] {
				continue
			}
			exp, conn, err := d.Dial(ctx, ep)
			if err == nil {
				return exp, conn, ep, nil
			}
			last = err
			if ctx.Err() != nil {
				break
			}
			if permanent(err) {
				refused[i] = true
				log.Errorf("connect", "%v (not retrying this server)", err)
				continue
			}
			alive++
			log.Errorf("connect", "attempt %d: %v", attempt, err)
		}
		if alive == 0 && ctx.Err() == nil {
			return nil, nil, config.Endpoint{}, fmt.Errorf("every server refused: %w", last)
		}
		select {
		case <-ctx.Done():
			return nil, nil, config.Endpoint{}, fmt.Errorf("gave up after %d attempts (deadline %v): %w", attempt, spec.Server.Deadline, last)
		case <-time.After(jitter(backoff)):
		}
		backoff = min(2*backoff, spec.Server.BackoffMax)
	}
}

// jitter returns a duration in [d/2, d): spread so that a thousand clients
// booting together do not hit a restarted server in lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// permanent reports whether err is the server's (or its certificate's)
// definite answer rather than a transient failure to reach it.
func permanent(err error) bool {
	var oe *negotiate.OptionError
	if errors.As(err, &oe) && oe.Code == negotiate.RepErrShutdown {
		return false // the server is going down: a restarted one may answer
	}
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cve *tls.CertificateVerificationError
	return errors.As(err, &oe) || errors.Is(err, negotiate.ErrExportNotFound) ||
		errors.Is(err, negotiate.ErrTLSRequired) || errors.Is(err, negotiate.ErrTLSUnsupported) ||
		errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cve)
}
