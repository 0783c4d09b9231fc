package boot

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/negotiate"
)

// Dial makes one attempt to reach ep and negotiate its export under spec's
// timeouts and TLS settings: a TCP dial bounded by spec.Server.ConnectTimeout
// (or a Unix socket connection when ep.Socket is set), then
// negotiate.Handshake bounded by spec.Server.HandshakeTimeout, with STARTTLS
// configured by TLSConfig when spec.TLS.Enabled. The returned connection is
// the one to hand to the kernel (or to relay, under TLS). Errors name the
// endpoint, as in "10.0.2.2:10809/rootfs: connect: ...".
func Dial(ctx context.Context, spec config.Spec, ep config.Endpoint) (*negotiate.Export, net.Conn, error) {
	opts, conn, err := dialOpts(ctx, spec, ep)
	if err != nil {
		return nil, nil, err
	}
	exp, conn, err := negotiate.Handshake(ctx, conn, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", EndpointString(ep), err)
	}
	return exp, conn, nil
}

// DialList is Dial's counterpart for negotiate.List: it connects the same way
// and returns every export the server lists, ignoring ep.Export.
func DialList(ctx context.Context, spec config.Spec, ep config.Endpoint) ([]negotiate.Export, error) {
	opts, conn, err := dialOpts(ctx, spec, ep)
	if err != nil {
		return nil, err
	}
	exps, err := negotiate.List(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", endpointServer(ep), err)
	}
	return exps, nil
}

// dialOpts builds the handshake options and opens the transport.
func dialOpts(ctx context.Context, spec config.Spec, ep config.Endpoint) (negotiate.Options, net.Conn, error) {
	opts := negotiate.Options{Export: ep.Export, Timeout: spec.Server.HandshakeTimeout}
	if spec.TLS.Enabled {
		cfg, err := TLSConfig(spec.TLS, ep.Host)
		if err != nil {
			return opts, nil, fmt.Errorf("%s: %w", EndpointString(ep), err)
		}
		opts.TLS = cfg
	}
	conn, err := dialTransport(ctx, spec.Server.ConnectTimeout, ep)
	if err != nil {
		return opts, nil, fmt.Errorf("%s: connect: %w", EndpointString(ep), err)
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

// endpointServer formats ep without its export name, for listing.
func endpointServer(ep config.Endpoint) string {
	if ep.Socket != "" {
		return "unix:" + ep.Socket
	}
	return net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port)))
}

// TLSConfig builds the client TLS configuration for a server reached as
// host: t.CAFile (PEM) becomes the trusted roots (the system roots when
// empty), t.CertFile and t.KeyFile the client certificate, and the server's
// certificate must name t.ServerName, or host when that is empty. The
// certificate is not checked at all only when t.VerifyPeer is false. TLS 1.2
// is the minimum, as the NBD protocol requires. It does not look at
// t.Enabled.
func TLSConfig(t config.TLS, host string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: !t.VerifyPeer,
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.ServerName == "" && t.VerifyPeer {
		return nil, errors.New("tls: no server name to check the certificate against (set tls-hostname)")
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: reading CA certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: no PEM certificate in CA file %s", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		if t.CertFile == "" || t.KeyFile == "" {
			return nil, errors.New("tls: a client certificate needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: loading client certificate %s with key %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func EndpointString(ep config.Endpoint) string {
	if ep.Socket != "" {
		return "unix:" + ep.Socket + "/" + ep.Export
	}
	return net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port))) + "/" + ep.Export
}
