package boot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/negotiate"
	"github.com/nbdroot/nbdroot/netlink"
)

// KeeperName is the keeper's argv[0]. systemd's shutdown spares processes
// whose argv[0] starts with '@' (they are "root storage daemons"), and the
// name tells an operator what the process is.
const KeeperName = "@nbdroot"

// keeperEnv carries the keeper's instructions (JSON of keeperArgs).
const keeperEnv = "NBDROOT_KEEPER"

// RunDir holds the keepers' pid and state files; it lives on /run, which
// follows PID 1 into the real root.
const RunDir = "/run/nbdroot"

// Signals understood by a keeper.
const (
	// SigDetach asks the keeper to stop after `nbdroot detach` disconnected
	// its device.
	SigDetach = unix.SIGUSR1
	// SigFollowRoot tells the keeper that PID 1 has switched root: it
	// chroots into PID 1's root so as not to pin the initramfs.
	SigFollowRoot = unix.SIGUSR2
)

// reconnectBackoffMax caps the backoff between reconnect attempts.
const reconnectBackoffMax = time.Second

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
	Attach   time.Duration     // handing the sockets to the kernel
	Pid      int               // the keeper's pid
}

// State is what a keeper publishes about its device in
// RunDir/nbdN.json, for `nbdroot status` and `nbdroot detach`.
type State struct {
	Device      string           `json:"device"`
	Index       int              `json:"index"`
	Server      string           `json:"server"`
	Export      string           `json:"export"`
	Size        uint64           `json:"size"`
	BlockSize   uint32           `json:"block_size"`
	Interface   config.Interface `json:"interface"`
	Connections int              `json:"connections"`
	TLS         bool             `json:"tls"`
	Pid         int              `json:"keeper_pid"`
	Reconnects  int              `json:"reconnects"`
	Since       time.Time        `json:"since"`
}

// StatePath returns the state file of /dev/nbdN.
func StatePath(index int) string { return filepath.Join(RunDir, "nbd"+strconv.Itoa(index)+".json") }

// stopPath is the file `nbdroot detach` creates before disconnecting, so
// that the keeper does not take the disconnect for a lost connection.
func stopPath(index int) string { return filepath.Join(RunDir, "nbd"+strconv.Itoa(index)+".stop") }

// pidPath is the keeper's pid file.
func pidPath(index int) string { return filepath.Join(RunDir, "nbd"+strconv.Itoa(index)+".pid") }

// keeperArgv is the keeper's argv. A plain nbdroot binary ignores the
// second word; a u-root busybox (gobusybox) needs it: its dispatcher knows
// no command "@nbdroot", so it drops argv[0] and runs the command the next
// word names, with os.Args shifted.
func keeperArgv() []string { return []string{KeeperName, "nbdroot"} }

// IsKeeper reports whether argv, or the argv the kernel started the process
// with, is a keeper's. The kernel's copy (/proc/self/cmdline) still starts
// with KeeperName when a u-root busybox has shifted os.Args.
func IsKeeper(argv []string) bool {
	if len(argv) > 0 && argv[0] == KeeperName {
		return true
	}
	b, err := os.ReadFile("/proc/self/cmdline")
	return err == nil && bytes.HasPrefix(b, []byte(KeeperName+"\x00"))
}

// StartKeeper starts the keeper process for spec on /dev/nbdN and waits
// until it reports the device live or gives up. The keeper's console is
// console (nil: none; it logs to /dev/kmsg as well). The keeper dials,
// negotiates and attaches by itself: TLS state cannot cross an exec, and the
// process that serves the device must be the one that reconnects it.
func StartKeeper(ctx context.Context, log *bootlog.Logger, spec config.Spec, device int, console *os.File) (*Report, error) {
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
	cmd.Args = keeperArgv()
	cmd.Env = append(os.Environ(), keeperEnv+"="+string(args))
	if console != nil {
		cmd.Stdout, cmd.Stderr = console, console
	}
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
	_ = cmd.Process.Release()
	return &rep, nil
}

// RunKeeper is the keeper's main: connect, attach, serve, and reconnect
// when a connection is lost, until the device is detached.
func RunKeeper() error {
	var a keeperArgs
	if err := json.Unmarshal([]byte(os.Getenv(keeperEnv)), &a); err != nil {
		return fmt.Errorf("keeper: bad %s: %w", keeperEnv, err)
	}
	os.Unsetenv(keeperEnv)
	// ps and top show the command name, which would be the initramfs's
	// "init" otherwise.
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte("nbdroot-keeper\x00")[0])), 0, 0, 0)
	// The signals that systemd and the console broadcast do not stop a
	// keeper: only `nbdroot detach` (or the kernel) does.
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), SigDetach)
	defer stop()
	log := bootlog.New(os.Stderr, a.Start)
	log.OpenKmsg()
	k := &keeper{log: log, step: "keeper nbd" + strconv.Itoa(a.Device), spec: a.Spec, dev: a.Device, status: os.NewFile(3, "status")}
	k.followRoot()
	err := k.run(ctx)
	if err != nil {
		log.Errorf(k.step, "%v", err)
	}
	_ = os.Remove(StatePath(k.dev))
	_ = os.Remove(pidPath(k.dev))
	_ = os.Remove(stopPath(k.dev))
	return err
}

// keeper is the state of one keeper process.
type keeper struct {
	log    *bootlog.Logger
	step   string
	spec   config.Spec
	dev    int
	status *os.File // the pipe to the starter, until the report is sent
	state  State
	// exportSize is the export's size at the first attach: a reconnect
	// must find the same.
	exportSize uint64
}

// report sends the one Report to the parent and closes the pipe.
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

// fail reports err to the starter if the device never became ready.
func (k *keeper) fail(err error) error {
	k.report(Report{Error: err.Error()})
	return err
}

// publish writes the state file atomically.
func (k *keeper) publish() {
	b, err := json.MarshalIndent(k.state, "", "  ")
	if err != nil {
		return
	}
	tmp := StatePath(k.dev) + ".tmp"
	if os.WriteFile(tmp, append(b, '\n'), 0o644) == nil {
		_ = os.Rename(tmp, StatePath(k.dev))
	}
}

func (k *keeper) run(ctx context.Context) error {
	defer k.report(Report{Error: "keeper: stopped before the device was ready"})
	if err := os.MkdirAll(RunDir, 0o755); err == nil {
		_ = os.WriteFile(pidPath(k.dev), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	}
	_ = os.Remove(stopPath(k.dev))
	_ = os.Chdir("/")
	d, err := NewDialer(k.spec)
	if err != nil {
		return k.fail(err)
	}
	iface, nl, err := k.chooseInterface()
	if err != nil {
		return k.fail(err)
	}
	if nl != nil {
		defer nl.Close()
	}
	t0 := time.Now()
	exp, conns, ep, err := k.connect(ctx, d, iface)
	if err != nil {
		return k.fail(err)
	}
	params, err := kernelParams(k.spec.Device, exp)
	if err != nil {
		closeAll(conns)
		return k.fail(err)
	}
	k.exportSize = exp.Size
	k.state = State{
		Device: "/dev/nbd" + strconv.Itoa(k.dev), Index: k.dev, Server: ep.Server(), Export: exp.Name,
		Size: params.Size, BlockSize: params.BlockSize, Interface: iface, Connections: len(conns),
		TLS: k.spec.TLS.Enabled, Pid: os.Getpid(), Since: time.Now(),
	}
	k.log.Printf(k.step, "%s: %d bytes, flags %s, via %s, %d connection(s), %s%s", ep, exp.Size, exp.Flags, exp.Path, len(conns), iface, tlsNote(exp))
	ready := func(attach time.Duration) {
		k.publish()
		setQueueLimits(k.log, k.step, k.dev, exp)
		k.report(Report{Ready: true, Endpoint: ep.String(), Export: exp, Connect: time.Since(t0) - attach, Attach: attach})
	}
	// A root device has nowhere else to go: once attached, reconnect until
	// the server comes back, trying at least every reconnectBackoffMax so
	// that I/O resumes soon after it does (jitter still spreads a fleet).
	again := *d
	again.spec.Server.Deadline = 0
	again.spec.Server.BackoffMax = min(again.spec.Server.BackoffMax, reconnectBackoffMax)
	again.spec.Server.BackoffInitial = min(again.spec.Server.BackoffInitial, again.spec.Server.BackoffMax)
	if iface == config.InterfaceNetlink {
		return k.serveNetlink(ctx, nl, &again, exp, conns, params, ready)
	}
	return k.serveIoctl(ctx, &again, exp, conns[0], params, ready)
}

// chooseInterface resolves device.interface: "auto" is netlink where the
// kernel has the nbd family, ioctl otherwise.
func (k *keeper) chooseInterface() (config.Interface, *netlink.Client, error) {
	want := k.spec.Device.Interface
	if want == config.InterfaceIoctl {
		return want, nil, nil
	}
	nl, err := netlink.Dial()
	if err == nil {
		return config.InterfaceNetlink, nl, nil
	}
	if want == config.InterfaceNetlink {
		return "", nil, fmt.Errorf("attach: device.interface is netlink: %w", err)
	}
	k.log.Printf(k.step, "netlink unavailable (%v); using ioctl", err)
	return config.InterfaceIoctl, nil, nil
}

// connect reaches the export and opens the extra connections of a
// multi-connection device: device.connections when the server allows it
// (NBD_FLAG_CAN_MULTI_CONN) and the interface is netlink, one otherwise.
func (k *keeper) connect(ctx context.Context, d *Dialer, iface config.Interface) (*negotiate.Export, []net.Conn, config.Endpoint, error) {
	exp, conn, ep, err := Connect(ctx, k.log, d)
	if err != nil {
		return nil, nil, ep, err
	}
	conns := []net.Conn{conn}
	want := k.spec.Device.Connections
	switch {
	case want <= 1:
	case iface != config.InterfaceNetlink:
		k.log.Printf(k.step, "one connection, not %d: multi-connection needs the netlink interface", want)
	case !exp.Flags.Has(negotiate.FlagCanMultiConn):
		k.log.Printf(k.step, "one connection, not %d: the server does not allow multiple connections (no CAN_MULTI_CONN)", want)
	default:
		for len(conns) < want {
			more, c, err := d.Dial(ctx, ep)
			if err == nil && more.Size != exp.Size {
				c.Close()
				err = fmt.Errorf("export size %d differs from the first connection's %d", more.Size, exp.Size)
			}
			if err != nil {
				k.log.Errorf(k.step, "connection %d of %d: %v; going on with %d", len(conns)+1, want, err, len(conns))
				break
			}
			conns = append(conns, c)
		}
	}
	return exp, conns, ep, nil
}

// reconnect dials until the export answers again with the same size, and
// returns the connection, or an error once ctx ends. It never gives up on
// its own: the device has nowhere else to go. A server that refuses (say, an
// export not configured yet after a restart) or that offers a different size
// (a different export behind the same name must not be attached under a
// mounted filesystem) is logged loudly and tried again, more slowly.
func (k *keeper) reconnect(ctx context.Context, d *Dialer) (net.Conn, error) {
	for {
		exp, conn, ep, err := Connect(ctx, k.log, d)
		if err == nil && exp.Size == k.exportSize {
			k.state.Server = ep.Server()
			return conn, nil
		}
		if err == nil {
			conn.Close()
			err = fmt.Errorf("%s: export size changed from %d to %d bytes; refusing to reattach", ep, k.exportSize, exp.Size)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		k.log.Errorf(k.step, "reconnect: %v; trying again in %v", err, refusedRetry)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(refusedRetry):
		}
	}
}

// refusedRetry is the pause before reconnecting to servers that all refused.
const refusedRetry = 10 * time.Second

// stopRequested reports whether `nbdroot detach` asked for the disconnect.
func (k *keeper) stopRequested() bool {
	_, err := os.Stat(stopPath(k.dev))
	return err == nil
}

// followRoot arranges for the keeper to chroot into PID 1's root when PID 1
// signals that it switched root, so that it does not keep the initramfs
// as its root. /proc is opened now: after switch_root the keeper's own
// /proc is gone with the initramfs.
func (k *keeper) followRoot() {
	proc, err := unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, SigFollowRoot)
	go func() {
		for range sig {
			root, err := unix.Openat(proc, "1/root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				k.log.Errorf(k.step, "follow PID 1's root: %v", err)
				continue
			}
			if err := unix.Fchdir(root); err == nil {
				err = unix.Chroot(".")
				if err == nil {
					err = unix.Chdir("/")
				}
				if err != nil {
					k.log.Errorf(k.step, "follow PID 1's root: %v", err)
				}
			}
			unix.Close(root)
		}
	}()
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// tlsNote describes the TLS session for the log, or "" without TLS.
func tlsNote(exp *negotiate.Export) string {
	if exp.TLSVersion == 0 {
		return ""
	}
	return ", " + tls.VersionName(exp.TLSVersion) + " " + tls.CipherSuiteName(exp.TLSCipher)
}
