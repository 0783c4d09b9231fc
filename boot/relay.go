package boot

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

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
			return 0, nil, fmt.Errorf("attach: socket: %w", err)
		}
		return int(f.Fd()), func() { f.Close() }, nil
	}
	tc, ok := conn.(*tls.Conn)
	if !ok {
		conn.Close()
		return 0, nil, fmt.Errorf("attach: cannot hand a %T to the kernel", conn)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tc.Close()
		return 0, nil, fmt.Errorf("attach: socketpair: %w", err)
	}
	kernel := os.NewFile(uintptr(fds[0]), "nbd-kernel")
	local := os.NewFile(uintptr(fds[1]), "nbd-relay")
	lc, err := net.FileConn(local)
	local.Close()
	if err != nil {
		kernel.Close()
		tc.Close()
		return 0, nil, fmt.Errorf("attach: relay: %w", err)
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

// setQueueLimits keeps the device's requests within the server's maximum
// payload: the kernel builds requests up to queue/max_sectors_kb (128 KiB by
// default), and a server that announced a smaller maximum would refuse them.
func setQueueLimits(log *Logger, step string, index int, exp *negotiate.Export) {
	if exp.MaxBlock == 0 || exp.MaxBlock == 0xffffffff {
		return
	}
	path := filepath.Join("/sys/block", "nbd"+strconv.Itoa(index), "queue", "max_sectors_kb")
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || uint64(cur)*1024 <= uint64(exp.MaxBlock) {
		return
	}
	kb := exp.MaxBlock / 1024
	if kb < 4 {
		log.Errorf(step, "the server's maximum payload of %d bytes is below one page; requests may be refused", exp.MaxBlock)
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(int(kb))), 0o644); err != nil {
		log.Errorf(step, "limit requests to the server's maximum payload (%d KiB): %v", kb, err)
	}
}
