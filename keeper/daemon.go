package keeper

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/negotiate"
	"github.com/nbdroot/nbdroot/network"
)

// Name is the keeper's argv[0]. systemd's shutdown spares processes whose
// argv[0] starts with '@' (they are "root storage daemons"), and the name
// tells an operator what the process is.
const Name = "@nbdroot"

// argsEnv carries the keeper's instructions (JSON of args).
const argsEnv = "NBDROOT_KEEPER"

// RuntimeName is the argv[0] of a keeper started on a running system
// (`nbdroot attach`): it runs from the root file system, so by systemd's
// convention it must not claim the '@' of a root storage daemon.
const RuntimeName = "nbdroot-keeper"

// args is what the starter tells the keeper.
type args struct {
	Spec   config.Spec
	Device int
	Start  time.Time      // the starter's log reference time
	Lease  *network.Lease // the root's network, to keep (nil: none)
	Root   string         // the exitrd to run from (StartOptions.Root)
	// FreeInitramfs: fd 4 is the switch pipe (StartOptions.Switched).
	FreeInitramfs bool `json:",omitempty"`
}

// argv is the keeper's argv: Name for the root's keeper, started from the
// initramfs, RuntimeName otherwise. A plain nbdroot binary ignores the
// second word; a u-root busybox (gobusybox) needs it: its dispatcher knows
// no such command, so it drops argv[0] and runs the command the next word
// names, with os.Args shifted.
func argv(root bool) []string {
	if root {
		return []string{Name, "nbdroot"}
	}
	return []string{RuntimeName, "nbdroot"}
}

// Is reports whether this process is a keeper: its starter hands it its
// instructions in the environment (argv[0] alone would not do: a u-root
// busybox shifts os.Args).
func Is() bool { return os.Getenv(argsEnv) != "" }

// Report is the keeper's one message to the process that started it.
type Report struct {
	// Ready is true once the device is live; otherwise Op and Error say
	// which step failed and why (an Error's fields).
	Ready    bool
	Op       string            `json:",omitempty"`
	Error    string            `json:",omitempty"`
	Device   int               // N of /dev/nbdN
	Endpoint string            // the server that answered
	Export   *negotiate.Export `json:",omitempty"`
	Startup  time.Duration     // fork, exec and the Go runtime's start, to 10 ms
	Connect  time.Duration     // dial + negotiate, retries included
	Attach   time.Duration     // handing the sockets to the kernel
	Pid      int               // the keeper's pid
}

// Error is a keeper's failure, named by the step that failed: "connect"
// (reaching the export), "attach" (handing it to the kernel), "serve"
// (keeping it attached) or "keeper" (the process itself).
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return e.Op + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// StartOptions are the optional parts of Start.
type StartOptions struct {
	// Console is the keeper's console (nil: none; it logs to /dev/kmsg
	// as well).
	Console *os.File
	// Lease is the root's network: the keeper defends it and renews its
	// DHCP lease for as long as it runs (network.Keep).
	Lease *network.Lease
	// Root, for the root device's keeper started by PID 1 of the
	// initramfs, is the exitrd directory (/run/initramfs) the keeper runs
	// from, as systemd's convention for root storage daemons wants: the
	// keeper gets a mount namespace of its own and makes Root its root,
	// so it never holds the real root file system, and takes the name
	// "@nbdroot" that systemd's shutdown spares.
	Root string
	// Binary is the executable to start (default: this one). With Root it
	// is the exitrd's nbdroot (Root/nbdroot): the same file the keeper's
	// mount namespace still reaches once it has made Root its root.
	Binary string
	// Switched, with Root, is the read end of a pipe whose write end PID 1
	// of the initramfs holds open, close-on-exec, until it executes the
	// root's init: at its end the keeper frees the initramfs, as
	// switch_root would have (shutdown.FreeInitramfs), off the boot's path
	// and at idle priority. The caller keeps its own copy and closes it
	// after Start.
	Switched *os.File
}

// Start starts the keeper process for spec on /dev/nbdN and waits until it
// reports the device live or gives up; its failure is an *Error. The
// keeper dials, negotiates and attaches by itself: TLS state cannot cross an
// exec, and the process that serves the device must be the one that
// reconnects it.
func Start(ctx context.Context, log *bootlog.Logger, spec config.Spec, device int, o StartOptions) (*Report, error) {
	fail := func(err error) (*Report, error) { return nil, &Error{Op: "keeper", Err: err} }
	a, err := json.Marshal(args{Spec: spec, Device: device, Start: log.Start(), Lease: o.Lease, Root: o.Root,
		FreeInitramfs: o.Root != "" && o.Switched != nil})
	if err != nil {
		return fail(fmt.Errorf("encode spec: %w", err))
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	defer r.Close()
	self := o.Binary
	if self == "" {
		if self, err = os.Executable(); err != nil {
			self = "/proc/self/exe"
		}
	}
	cmd := exec.Command(self)
	cmd.Args = argv(o.Root != "")
	cmd.Env = append(keeperEnv(os.Environ(), &spec, runtime.NumCPU()), argsEnv+"="+string(a))
	if o.Console != nil {
		cmd.Stdout, cmd.Stderr = o.Console, o.Console
	}
	cmd.ExtraFiles = []*os.File{w} // fd 3
	if o.Root != "" && o.Switched != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, o.Switched) // fd 4: switchedFD
	}
	// A session of its own: no console signals, no controlling terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.Root != "" {
		// A mount namespace of its own, made before the keeper's first
		// instruction, so that every thread of it is inside: what the
		// keeper mounts there nobody else sees, and the real root, which
		// PID 1 mounts later, never appears in it.
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	if err := withoutTHP(cmd.Start); err != nil {
		w.Close()
		return fail(fmt.Errorf("start %s: %w", self, err))
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
		return fail(fmt.Errorf("exited without reporting (%v)", cmd.Wait()))
	}
	if !rep.Ready {
		_ = cmd.Wait()
		return nil, &Error{Op: rep.Op, Err: errors.New(rep.Error)}
	}
	// The keeper outlives us; its parent (PID 1, later the real init)
	// reaps it.
	_ = cmd.Process.Release()
	return &rep, nil
}

// keeperGODEBUG is the keeper's Go runtime settings, in effect before its
// first allocation: no memory profiling, which no one reads from a keeper
// and which would allocate the profiler's 1.4 MiB bucket table (measured in
// a Debian root: BuckHashSys 1,443,164 bytes) and a record per sampled
// stack.
const keeperGODEBUG = "memprofilerate=0"

// keeperEnv is the keeper's environment: env with the keeper's Go runtime
// settings, which the runtime applies before it runs any code of ours:
// GODEBUG (keeperGODEBUG), GOGC (gcPercent) and GOMAXPROCS (procs). Set in
// Main instead, they came after the runtime had started a P per CPU and
// run the package initialisers, the spec's decoding and the first
// exchanges under GOGC 100: a Debian root's keeper held 1796–1928 kB
// anonymous at 60 s that way, and 1448–1480 kB this way (two boots each),
// most of the difference the runtime's own structures.
func keeperEnv(env []string, spec *config.Spec, cpus int) []string {
	env = slices.DeleteFunc(withGODEBUG(env, keeperGODEBUG), func(kv string) bool {
		return strings.HasPrefix(kv, "GOGC=") || strings.HasPrefix(kv, "GOMAXPROCS=")
	})
	return append(env, "GOGC="+strconv.Itoa(gcPercent), "GOMAXPROCS="+strconv.Itoa(procs(spec, cpus)))
}

// withGODEBUG returns env with its GODEBUG entries made one, settings
// appended (the runtime takes the last of a repeated setting).
func withGODEBUG(env []string, settings string) []string {
	out := make([]string, 0, len(env)+1)
	var all []string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if v != "" {
				all = append(all, v)
			}
			continue
		}
		out = append(out, kv)
	}
	return append(out, "GODEBUG="+strings.Join(append(all, settings), ","))
}

// withoutTHP runs start, which forks the keeper, with transparent huge
// pages off for this process (PR_SET_THP_DISABLE), so that the keeper
// starts with them off: a child inherits the setting across fork and keeps
// it across execve (prctl(2)). It is cleared again afterwards unless it was
// set before: PID 1 later becomes the root's init, whose children must not
// inherit it. Distribution kernels (Debian's among them) back every
// anonymous mapping with 2 MiB pages when they can, and the keeper's
// memory is a few hundred KiB of heap and the Go runtime's own structures:
// measured in a Debian root, one huge page held 2 MiB of runtime
// structures and another (before the heap was covered) 4 MiB of heap. Go's
// GODEBUG=disablethp covers only the heap; this covers every mapping from
// the keeper's first instruction on. A failed prctl only costs memory.
func withoutTHP(start func() error) error {
	if was, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0); err == nil && was == 0 &&
		unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0) == nil {
		defer unix.Prctl(unix.PR_SET_THP_DISABLE, 0, 0, 0, 0)
	}
	return start()
}

// SigDetach, the one signal a keeper understands, asks it to stop after
// `nbdroot detach` disconnected its device.
const SigDetach = unix.SIGUSR1

// Main is the keeper process's main (argv[0] Name, see Is): it takes on the
// daemon's identity, then connects, attaches and serves the device until it
// is detached. It logs its own errors.
func Main() error {
	startup, _ := bootlog.ProcessAge()
	var a args
	if err := json.Unmarshal([]byte(os.Getenv(argsEnv)), &a); err != nil {
		return &Error{Op: "keeper", Err: fmt.Errorf("bad %s: %w", argsEnv, err)}
	}
	os.Unsetenv(argsEnv)
	// The signals that systemd and the console broadcast do not stop a
	// keeper: only `nbdroot detach` (or the kernel) does.
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), SigDetach)
	defer stop()
	log := bootlog.New(os.Stderr, a.Start)
	log.OpenKmsg()
	log.SetDebug(a.Spec.Boot.Debug())
	k := &keeper{log: log, step: "keeper " + nbddev.Name(a.Device), spec: a.Spec, dev: a.Device, lease: a.Lease, status: os.NewFile(3, "status"), startup: startup}
	protect(log, k.step)
	// The TLS files are read now, while they can be: the exitrd holds none.
	d, derr := dial.NewDialer(k.spec)
	if a.FreeInitramfs {
		// Before enterRoot, while "/" is the initramfs.
		var err error
		if k.initramfs, err = openInitramfs(); err != nil {
			log.Errorf(k.step, "%v: the initramfs stays after the switch", err)
		}
	}
	if a.Root != "" {
		if err := enterRoot(a.Root); err != nil {
			// The keeper still works from the initramfs; only the
			// convention (and systemd's warning at shutdown) suffers.
			log.Errorf(k.step, "run from %s: %v", a.Root, err)
		}
	}
	log.Debugf(k.step, "started %.3fs after the fork; root %s", startup.Seconds(), cmp.Or(a.Root, "/"))
	var err error
	if a.Spec.Device.Swap {
		if n, lerr := lockMemory(); lerr != nil {
			err = k.fail("lock memory", fmt.Errorf("device.swap: %w", lerr))
		} else {
			log.Printf(k.step, "device.swap: locked in memory (the binary's %d KiB resident)", n>>10)
		}
	}
	switch {
	case err != nil:
	case derr != nil:
		err = k.fail("connect", derr)
	default:
		err = k.run(ctx, d)
	}
	if err != nil {
		log.Errorf(k.step, "%v", err)
	}
	k.dir.Release(k.dev)
	return err
}

// gcPercent is the keeper's GOGC. Its heap holds about 250 KiB that live
// (the spec, the lease, the netlink and DHCP clients; measured in a Debian
// root) and a trickle of garbage (the guard's sweeps, 2.6 KiB each, at
// rtnetlink events and once a minute), so the heap climbs to its goal
// between collections. For a heap
// this small the goal is Go's floor of 4 MiB × GOGC/100 (4 MiB at Go's
// default, 1 MiB at 25), or the live heap plus 1 MiB when a collection
// ended before its sweep did (the runtime's sweepMinHeapDistance), which
// a lower GOGC does not move: measured at 10, the goal stayed at 1.19 MiB.
const gcPercent = 25

// procs is the keeper's GOMAXPROCS. Without TLS the kernel moves the data
// and the keeper only waits (on the kernel, the server's link, the lease),
// which one CPU serves; over TLS each connection relays both ways through
// the keeper, and gets up to two CPUs. Go's default of one P per CPU would
// give a keeper on a 64-CPU server 64 per-P allocation caches, and up to
// 16 GC workers' threads, for work that one thread serves. (On the 2-CPU
// test guest, one P instead of two left about 50 KiB less resident, one
// boot each.)
func procs(spec *config.Spec, cpus int) int {
	if !spec.TLS.Enabled {
		return 1
	}
	return max(1, min(cpus, 2*spec.Device.Connections))
}

// protect keeps the kernel from turning on the keeper under memory
// pressure: the OOM killer passes it over (oom_score_adj -1000), and as an
// I/O flusher (PR_SET_IO_FLUSHER) its allocations do not wait on the very
// writeback it carries, which would deadlock a root device.
func protect(log *bootlog.Logger, step string) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		log.Errorf(step, "oom_score_adj: %v", err)
	}
	// The flag is a thread's, not the process's: it goes on every thread
	// the runtime has, and the threads it starts later inherit it from the
	// thread that clones them.
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0, 0); errno != 0 {
		log.Errorf(step, "PR_SET_IO_FLUSHER: %v", errno)
	}
}

// enterRoot makes dir (the exitrd, on /run) the keeper's root inside the
// mount namespace Start gave it: the namespace's mounts become private,
// /proc, /sys, /dev and /run are bound into dir (in this namespace only),
// /etc/resolv.conf is copied in for reconnects by name, and dir becomes the
// root. The keeper then holds neither the initramfs nor, ever, the real
// root: systemd's shutdown sees a root storage daemon running from an
// initrd file system, as ROOT_STORAGE_DAEMONS.md asks.
func enterRoot(dir string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	for _, m := range []string{"/proc", "/sys", "/dev", "/run"} {
		dst := filepath.Join(dir, m)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", m, err)
		}
	}
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		_ = os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
		_ = os.WriteFile(filepath.Join(dir, "etc", "resolv.conf"), b, 0o644)
	}
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if err := unix.Fchdir(root); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}
