// Package dial reaches an NBD export: it opens the transport (TCP, or a
// Unix socket), sets up TLS from a spec's certificate files, negotiates with
// package negotiate, and, in Connect, tries a spec's servers round after
// round with backoff until one answers. The boot's keeper, probe and list
// all connect through it, so they behave alike. Query opens a session for
// looking at an export (probe --map), whose connection never goes to the
// kernel.
//
// It owns the connection attempt and its retry policy, not the connection
// afterwards (the keeper hands it to the kernel). It may import config,
// negotiate, bootlog and the standard library; nothing that makes Linux
// calls.
package dial

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/negotiate"
)

// Error is a failed attempt to reach one endpoint, as in
// "10.0.2.2:10809/root: connect: connection refused" or
// "10.0.2.2:10809/root: negotiate: ...".
type Error struct {
	// Endpoint is the server (and export) attempted; empty when the
	// failure came before any was.
	Endpoint string
	// Op is what failed: "connect" (the transport), "tls" (setting it up),
	// or empty when Err names it (negotiate's errors do).
	Op  string
	Err error
}

func (e *Error) Error() string {
	s := ""
	if e.Endpoint != "" {
		s = e.Endpoint + ": "
	}
	if e.Op != "" {
		s += e.Op + ": "
	}
	return s + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Dialer makes connection attempts exactly as the keeper does: a TCP dial bounded
// by Server.ConnectTimeout (or a Unix socket connection when the endpoint has
// a Socket), then negotiate.Handshake bounded by Server.HandshakeTimeout,
// with STARTTLS when TLS.Enabled. It reads the TLS files once, when it is
// made: a keeper that reconnects after switch_root can no longer read the
// initramfs they came from.
type Dialer struct {
	spec  config.Spec
	tls   *tls.Config // nil without TLS; ServerName is set per endpoint
	start int         // the endpoint a round of Connect starts at
}

// NewDialer returns a Dialer for spec, with its TLS material loaded.
func NewDialer(spec config.Spec) (*Dialer, error) {
	d := &Dialer{spec: spec}
	if spec.TLS.Enabled {
		cfg, err := loadTLS(spec.TLS)
		if err != nil {
			return nil, &Error{Op: "tls", Err: err}
		}
		d.tls = cfg
	}
	return d, nil
}

// WithIdentity returns a copy of d whose rounds of attempts start at the
// server that id, the machine's identity (its NIC's MAC address), picks when
// the spec's server.order is "spread"; with "listed" (or one server) they
// start at the first. The pick is a hash of id: the same machine always
// starts at the same server, and a lab's machines spread evenly.
func (d *Dialer) WithIdentity(id []byte) *Dialer {
	c := *d
	c.start = startIndex(d.spec.Server.Order, len(d.spec.Server.Endpoints), id)
	return &c
}

// startIndex is the server a round starts at, out of n.
func startIndex(order config.Order, n int, id []byte) int {
	if order != config.OrderSpread || n < 2 || len(id) == 0 {
		return 0
	}
	h := fnv.New32a()
	h.Write(id)
	return int(h.Sum32() % uint32(n))
}

// Persistent returns a copy of d for reconnecting a device that has
// nowhere else to go: no deadline, and at most backoffMax between rounds.
func (d *Dialer) Persistent(backoffMax time.Duration) *Dialer {
	again := *d
	s := &again.spec.Server
	s.Deadline = 0
	s.BackoffMax = min(s.BackoffMax, backoffMax)
	s.BackoffInitial = min(s.BackoffInitial, s.BackoffMax)
	return &again
}

// Dial makes one attempt to reach ep and negotiate its export. The returned
// connection is the one to hand to the kernel (or to relay, under TLS).
// Errors name the endpoint, as in "10.0.2.2:10809/rootfs: connect: ...".
func (d *Dialer) Dial(ctx context.Context, ep config.Endpoint) (*negotiate.Export, net.Conn, error) {
	opts, conn, err := d.open(ctx, ep)
	if err != nil {
		return nil, nil, err
	}
	exp, conn, err := negotiate.Handshake(ctx, conn, opts)
	if err != nil {
		return nil, nil, &Error{Endpoint: ep.String(), Err: err}
	}
	return exp, conn, nil
}

// List connects as Dial does and returns every export the server lists,
// ignoring ep.Export.
func (d *Dialer) List(ctx context.Context, ep config.Endpoint) ([]negotiate.Export, error) {
	opts, conn, err := d.open(ctx, ep)
	if err != nil {
		return nil, err
	}
	exps, err := negotiate.List(ctx, conn, opts)
	if err != nil {
		return nil, &Error{Endpoint: ep.Server(), Err: err}
	}
	return exps, nil
}

// Query connects as Dial does and opens a query session on ep's export with
// the metadata context metaContext (negotiate.OpenQuery): structured
// replies, for looking at the export, never for the kernel. The caller
// closes the Query.
func (d *Dialer) Query(ctx context.Context, ep config.Endpoint, metaContext string) (*negotiate.Query, error) {
	opts, conn, err := d.open(ctx, ep)
	if err != nil {
		return nil, err
	}
	q, err := negotiate.OpenQuery(ctx, conn, opts, metaContext)
	if err != nil {
		return nil, &Error{Endpoint: ep.String(), Err: err}
	}
	return q, nil
}

// Dial is a one-off attempt: NewDialer(spec) and Dial(ep).
func Dial(ctx context.Context, spec config.Spec, ep config.Endpoint) (*negotiate.Export, net.Conn, error) {
	d, err := NewDialer(spec)
	if err != nil {
		return nil, nil, &Error{Endpoint: ep.String(), Op: "tls", Err: errors.Unwrap(err)}
	}
	return d.Dial(ctx, ep)
}

// open builds the handshake options for ep and opens the transport.
func (d *Dialer) open(ctx context.Context, ep config.Endpoint) (negotiate.Options, net.Conn, error) {
	opts := negotiate.Options{Export: ep.Export, Timeout: d.spec.Server.HandshakeTimeout}
	if d.tls != nil {
		cfg, err := withServerName(d.tls, d.spec.TLS, ep.Host)
		if err != nil {
			return opts, nil, &Error{Endpoint: ep.String(), Op: "tls", Err: err}
		}
		opts.TLS = cfg
	}
	conn, err := dialTransport(ctx, d.spec.Server.ConnectTimeout, ep)
	if err != nil {
		return opts, nil, &Error{Endpoint: ep.String(), Op: "connect", Err: err}
	}
	return opts, conn, nil
}

// dialTransport opens the TCP connection (or Unix socket) to ep.
func dialTransport(ctx context.Context, timeout time.Duration, ep config.Endpoint) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if ep.Socket != "" {
		return d.DialContext(ctx, "unix", ep.Socket)
	}
	if ep.Host == "" {
		return nil, errors.New("no server address (the DHCP root-path option has not supplied one)")
	}
	return d.DialContext(ctx, "tcp", net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port))))
}

// withServerName returns a copy of cfg checking the name t.ServerName, or
// host when that is empty.
func withServerName(cfg *tls.Config, t config.TLS, host string) (*tls.Config, error) {
	cfg = cfg.Clone()
	cfg.ServerName = t.ServerName
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.ServerName == "" && t.VerifyPeer {
		return nil, errors.New("no server name to check the certificate against (set tls-hostname)")
	}
	return cfg, nil
}

// loadTLS reads t's CA bundle and client certificate into a configuration
// without a server name.
func loadTLS(t config.TLS) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: !t.VerifyPeer,
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in CA file %s", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		if t.CertFile == "" || t.KeyFile == "" {
			return nil, errors.New("a client certificate needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate %s with key %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
