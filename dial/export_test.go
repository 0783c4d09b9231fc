// Exported for the external tests only: the product builds its TLS
// configuration through NewDialer.

package dial

import (
	"crypto/tls"

	"github.com/nbdroot/nbdroot/config"
)

// TLSConfig builds the client TLS configuration for a server reached as
// host: t.CAFile (PEM) becomes the trusted roots (the system roots when
// empty), t.CertFile and t.KeyFile the client certificate, and the server's
// certificate must name t.ServerName, or host when that is empty. The
// certificate is not checked at all only when t.VerifyPeer is false. TLS 1.2
// is the minimum, as the NBD protocol requires. It does not look at
// t.Enabled.
func TLSConfig(t config.TLS, host string) (*tls.Config, error) {
	cfg, err := loadTLS(t)
	if err == nil {
		cfg, err = withServerName(cfg, t, host)
	}
	if err != nil {
		return nil, &Error{Op: "tls", Err: err}
	}
	return cfg, nil
}
