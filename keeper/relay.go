package keeper

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/negotiate"
)

// kernelSocket returns a socket descriptor the kernel can use for conn, and a
// function that closes the keeper's copy (the kernel keeps its own
// reference). A plain TCP or Unix connection is handed over as it is; a TLS
// connection is relayed through a socketpair, because the kernel cannot
// speak TLS: the relay runs until either side closes.
func kernelSocket(conn net.Conn) (int, func(), error) {
	if fc, ok := conn.(interface{ File() (*os.File, error) }); ok {
		f, err := fc.File()
		conn.Close()
		if err != nil {
			return 0, nil, fmt.Errorf("socket: %w", err)
		}
		return int(f.Fd()), func() { f.Close() }, nil
	}
	tc, ok := conn.(*tls.Conn)
	if !ok {
		conn.Close()
		return 0, nil, fmt.Errorf("cannot hand a %T to the kernel", conn)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tc.Close()
		return 0, nil, fmt.Errorf("socketpair: %w", err)
	}
	kernel := os.NewFile(uintptr(fds[0]), "nbd-kernel")
	local := os.NewFile(uintptr(fds[1]), "nbd-relay")
	lc, err := net.FileConn(local)
	local.Close()
	if err != nil {
		kernel.Close()
		tc.Close()
		return 0, nil, fmt.Errorf("relay: %w", err)
	}
	go relay(lc, tc)
	return int(kernel.Fd()), func() { kernel.Close() }, nil
}

// relay copies both ways between the kernel's end and the TLS connection
// until either side closes, then closes both, so that the kernel sees a dead
// link when the server goes away.
func relay(kernel, server net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(server, kernel)
	go cp(kernel, server)
	<-done
	kernel.Close()
	server.Close()
	<-done
}

// Request sizing. The kernel's defaults (128 KiB requests, 128 KiB
// readahead) cost a network round trip per 128 KiB; a network block device
// reads faster with fewer, larger requests.
const (
	// defaultMaxPayload is what the NBD protocol lets a client send to a
	// server that announced no maximum (doc/proto.md: 32 MiB).
	defaultMaxPayload = 32 << 20
	// requestKiB is the request size and readahead nbdroot asks for.
	requestKiB = 1024
)

// setQueueLimits sizes the device's requests: up to requestKiB, within the
// server's maximum payload (a server refuses larger requests) and the
// driver's hardware limit; and readahead to match.
func setQueueLimits(log *bootlog.Logger, step string, sys nbddev.Sysfs, index int, exp *negotiate.Export) {
	payload := uint64(defaultMaxPayload)
	if exp.MaxBlock != 0 && exp.MaxBlock != 0xffffffff {
		payload = uint64(exp.MaxBlock)
	}
	kb := min(uint64(requestKiB), payload/1024)
	if hw, err := sys.Queue(index, "max_hw_sectors_kb"); err == nil {
		kb = min(kb, hw)
	}
	if kb < 4 {
		log.Errorf(step, "the server's maximum payload of %d bytes is below one page; requests may be refused", payload)
		return
	}
	for _, f := range []string{"max_sectors_kb", "read_ahead_kb"} {
		if err := sys.SetQueue(index, f, kb); err != nil {
			log.Errorf(step, "set %s to %d: %v", f, kb, err)
		}
	}
}
