package boot_test

import (
	"context"
	"net"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/negotiate"
)

// BenchmarkHandshakeNbdkit measures one complete connection as boot makes it
// against nbdkit's memory plugin on loopback: TCP dial, the fixed-newstyle
// greeting, NBD_OPT_GO with block sizes, then NBD_CMD_DISC and close. Most of
// the time is the server's (nbdkit starts a thread per connection); allocs/op
// is ours.
func BenchmarkHandshakeNbdkit(b *testing.B) {
	s := testrig.Nbdkit(b, "memory", "64M")
	ctx := context.Background()
	var d net.Dialer
	b.ReportAllocs()
	for b.Loop() {
		conn, err := d.DialContext(ctx, "tcp", s.Addr)
		if err != nil {
			b.Fatal(err)
		}
		exp, conn, err := negotiate.Handshake(ctx, conn, negotiate.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if exp.Path != negotiate.PathGo {
			b.Fatalf("path %q, want %q", exp.Path, negotiate.PathGo)
		}
		if err := negotiate.Disconnect(conn); err != nil {
			b.Fatal(err)
		}
	}
}
