package boot

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/ioctl"
	"github.com/nbdroot/nbdroot/negotiate"
)

// KeeperName is the keeper's argv[0]. systemd's shutdown spares processes
// whose argv[0] starts with '@' (they are "root storage daemons"), and the
// name tells an operator what the process is.
const KeeperName = "@nbdroot"

// keeperEnv carries the keeper's instructions (JSON of keeperArgs).
const keeperEnv = "NBDROOT_KEEPER"

// RunDir holds the keepers' pid files; it lives on /run, which follows
// PID 1 into the real root.
const RunDir = "/run/nbdroot"

// keeperArgs is what the parent tells the keeper.
type keeperArgs struct {
	Spec   config.Spec
	Device int
	Start  time.Time // the parent's log reference time
}

// Report is the keeper's one message to the process that started it.
type Report struct {
	// Ready is true once the device is live; otherwise Error says why not.
	Ready    bool
	Error    string            `json:",omitempty"`
	Device   int               // N of /dev/nbdN
	Endpoint string            // the server that answered
	Export   *negotiate.Export `json:",omitempty"`
	Connect  time.Duration     // dial + negotiate, retries included
	Attach   time.Duration     // ioctls until the kernel started the device
	Pid      int               // the keeper's pid
}

// IsKeeper reports whether argv is a keeper's.
func IsKeeper(argv []string) bool { return len(argv) > 0 && argv[0] == KeeperName }

// StartKeeper starts the keeper process for spec on /dev/nbdN and waits until
// it reports the device live or gives up. The keeper dials, negotiates and
// attaches by itself: TLS state cannot cross an exec, and the process that
// serves the device must be the one that reconnects it.
func StartKeeper(ctx context.Context, log *Logger, spec config.Spec, device int) (*Report, error) {
	args, err := json.Marshal(keeperArgs{Spec: spec, Device: device, Start: log.Start()})
	if err != nil {
		return nil, fmt.Errorf("keeper: encode spec: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("keeper: %w", err)
	}
	defer r.Close()
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self)
	cmd.Args = []string{KeeperName}
	cmd.Env = append(os.Environ(), keeperEnv+"="+string(args))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.ExtraFiles = []*os.File{w} // fd 3
	// A session of its own: no console signals, no controlling terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("keeper: start %s: %w", self, err)
	}
	w.Close()
	stop := context.AfterFunc(ctx, func() { r.SetReadDeadline(time.Now()) })
	defer stop()
	line, rerr := bufio.NewReader(r).ReadBytes('\n')
	var rep Report
	if rerr != nil || json.Unmarshal(line, &rep) != nil {
		if ctx.Err() != nil {
			_ = cmd.Process.Kill()
		}
		werr := cmd.Wait()
		return nil, fmt.Errorf("keeper: exited without reporting (%v)", werr)
	}
	if !rep.Ready {
		_ = cmd.Wait()
		return nil, errors.New(rep.Error)
	}
	// The keeper outlives us; its parent (PID 1, later the real init)
	// reaps it.
	return &rep, nil
}

// RunKeeper is the keeper's main: connect, attach, serve, and reconnect
// when the connection is lost, until the device is detached.
func RunKeeper(ctx context.Context) error {
	var a keeperArgs
	if err := json.Unmarshal([]byte(os.Getenv(keeperEnv)), &a); err != nil {
		return fmt.Errorf("keeper: bad %s: %w", keeperEnv, err)
	}
	os.Unsetenv(keeperEnv)
	status := os.NewFile(3, "status")
	log := NewLogger(os.Stderr, a.Start)
	log.OpenKmsg()
	step := "keeper nbd" + strconv.Itoa(a.Device)
	k := &keeper{log: log, step: step, spec: a.Spec, dev: a.Device}
	err := k.run(ctx, status)
	if err != nil {
		log.Errorf(step, "%v", err)
	}
	return err
}

type keeper struct {
	log    *Logger
	step   string
	spec   config.Spec
	dev    int
	size   uint64 // the export size at first attach
	status *os.File
}

// report sends the one Report to the parent and closes the channel.
func (k *keeper) report(rep Report) {
	if k.status == nil {
		return
	}
	rep.Device, rep.Pid = k.dev, os.Getpid()
	b, _ := json.Marshal(rep)
	_, _ = k.status.Write(append(b, '\n'))
	k.status.Close()
	k.status = nil
}

func (k *keeper) run(ctx context.Context, status *os.File) error {
	k.status = status
	defer k.report(Report{Error: "keeper: stopped before the device was ready"})
	if err := os.MkdirAll(RunDir, 0o755); err == nil {
		pidfile := filepath.Join(RunDir, "nbd"+strconv.Itoa(k.dev)+".pid")
		_ = os.WriteFile(pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	}
	_ = os.Chdir("/")
	first, err := NewDialer(k.spec)
	if err != nil {
		k.report(Report{Error: err.Error()})
		return err
	}
	// A root device has nowhere else to go: after the first attach, keep
	// trying until the server comes back.
	again := *first
	again.spec.Server.Deadline = 0
	for round := 0; ; round++ {
		d := first
		if round > 0 {
			d = &again
		}
		t0 := time.Now()
		exp, conn, ep, err := Connect(ctx, k.log, d)
		if err != nil {
			if round == 0 {
				k.report(Report{Error: err.Error()})
			}
			return err
		}
		connected := time.Since(t0)
		if round == 0 {
			k.size = exp.Size
		} else if exp.Size != k.size {
			conn.Close()
			return fmt.Errorf("reconnect: %s: export size changed from %d to %d bytes; refusing to reattach", ep.String(), k.size, exp.Size)
		}
		k.log.Printf(k.step, "%s: %d bytes, flags %s, via %s", ep.String(), exp.Size, exp.Flags, exp.Path)
		err = k.serve(ctx, conn, exp, func(attach time.Duration) {
			if round == 0 {
				k.report(Report{Ready: true, Endpoint: ep.String(), Export: exp, Connect: connected, Attach: attach})
			} else {
				k.log.Printf(k.step, "reconnected to %s after %d rounds", ep.String(), round)
			}
		})
		if err != nil && round == 0 && k.status != nil {
			k.report(Report{Error: err.Error()})
			return err
		}
		if k.stopRequested() {
			k.log.Printf(k.step, "disconnected on request")
			return nil
		}
		k.log.Errorf(k.step, "connection lost (%v); reconnecting", errOr(err, "server closed the connection"))
	}
}

// stopRequested reports whether `nbdroot detach` asked for the disconnect.
func (k *keeper) stopRequested() bool {
	_, err := os.Stat(filepath.Join(RunDir, "nbd"+strconv.Itoa(k.dev)+".stop"))
	return err == nil
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

// serve hands conn to the kernel and runs DO_IT until the device stops.
// live is called once the kernel has started the device.
func (k *keeper) serve(ctx context.Context, conn net.Conn, exp *negotiate.Export, live func(attach time.Duration)) error {
	t0 := time.Now()
	params, err := kernelParams(k.spec.Device, exp)
	if err != nil {
		conn.Close()
		return err
	}
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
	go func() { done <- dev.Serve(sock, params, func() { close(configured) }) }()
	select {
	case err := <-done:
		return err
	case <-configured:
	}
	// DO_IT starts the device from the other thread; wait until it is live.
	for !ioctl.Live(k.dev) {
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
	bs := d.BlockSize
	if bs == 0 {
		// 512 fits every filesystem (ext4 made on a small image uses 1 KiB
		// blocks and refuses a larger logical block size); request sizes
		// are set by the queue limits, not by this.
		bs = max(512, exp.MinBlock)
	}
	if exp.MinBlock != 0 && bs < exp.MinBlock {
		return ioctl.Params{}, fmt.Errorf("attach: block size %d is below the server's minimum %d", bs, exp.MinBlock)
	}
	if exp.Size < uint64(bs) {
		return ioctl.Params{}, fmt.Errorf("attach: export of %d bytes is smaller than one %d-byte block", exp.Size, bs)
	}
	return ioctl.Params{
		Size:      exp.Size - exp.Size%uint64(bs),
		BlockSize: bs,
		Flags:     uint16(exp.Flags),
		Timeout:   d.Timeout,
		ReadOnly:  d.ReadOnly,
	}, nil
}

// kernelSocket returns a socket descriptor the kernel can use for conn, and a
// function that releases it once the device stops. A plain TCP or Unix
// connection is handed over as it is; a TLS connection is relayed through a
// socketpair, because the kernel cannot speak TLS.
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
// until either side closes, then closes both.
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
