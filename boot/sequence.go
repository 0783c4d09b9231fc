package boot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/keeper"
	"github.com/nbdroot/nbdroot/kmod"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/network"
	"github.com/nbdroot/nbdroot/network/ifname"
	"github.com/nbdroot/nbdroot/shutdown"
)

// Options configure Run.
type Options struct {
	// Cmdline is the kernel command line; empty means /proc/cmdline.
	Cmdline string
	// ConfigPath names the TOML file; empty means nbdroot.config= or
	// config.DefaultConfigPath.
	ConfigPath string
	// InitArgs are PID 1's own arguments: what the kernel meant for init.
	InitArgs []string
}

// Progress remembers what earlier attempts of one boot achieved, so that a
// retry (`nbdroot boot --retry` from the rescue shell) resumes where the last
// attempt failed instead of starting over: the modules stay loaded, the
// network stays up if its spec did not change, and an attached device is
// reused if its server and device spec did not change (and detached
// otherwise). The zero value is a first attempt.
type Progress struct {
	mods     *kmod.Modules
	netSpec  config.Network
	lease    *network.Lease
	keepSpec config.Spec // the spec the keeper was started with
	keeper   *keeper.Report
	// exitrd installs /run/initramfs once (PID 1 only) and returns it:
	// the keeper runs from its nbdroot.
	exitrd func() (shutdown.Exitrd, error)
	// switched holds PID 1's ends of the switch pipes of the root keepers
	// it started (keeper.StartOptions.Switched), close-on-exec: the exec
	// of the root's init closes them, which tells the keeper to free the
	// initramfs. None is closed before: a keeper of an earlier attempt
	// that outlived its detach would free the initramfs under PID 1.
	switched []*os.File
	// keeperFrees: keeper got a switch pipe, and frees the initramfs.
	keeperFrees bool
}

// Run is the boot: early mounts, spec, modules, network, connect and attach
// (in the keeper), mount, switch_root. On success it does not return: the
// real init replaces it. On failure it returns the error, wrapped in a
// *StepError naming the step, and the failure policy to apply (the defaults'
// when the spec itself could not be read).
func Run(ctx context.Context, log *bootlog.Logger, opts Options, prog *Progress) (config.Boot, error) {
	begun := time.Now()
	policy := config.Defaults().Boot
	fail := func(step string, err error) (config.Boot, error) {
		return policy, &StepError{Step: step, Err: err}
	}
	if err := MountEarly(); err != nil {
		return fail("early mounts", err)
	}
	_ = SetupConsole()
	log.OpenKmsg()
	restoreKmsg := func() {}
	if os.Getpid() == 1 {
		restoreKmsg = bootlog.Unlimit()
	}
	var execAge error
	if os.Getpid() == 1 && prog.mods == nil {
		// From here the log counts from the kernel's exec of /init, so
		// that the start step holds the exec and the Go runtime's start.
		var age time.Duration
		if age, execAge = bootlog.ExecAge(); execAge == nil {
			log.Rebase(time.Now().Add(-age))
		}
	}
	log.Printf("start", "nbdroot as PID 1")
	if execAge != nil {
		log.Printf("start", "times count from nbdroot's own start, not the kernel's exec of /init: %v", execAge)
	}
	if prog.exitrd == nil && os.Getpid() == 1 {
		// The exitrd (systemd-shutdown's way back, and the keeper's home)
		// is this very binary, linked into shutdown.Stage and bound onto
		// /run/initramfs (a copy where that fails), made once the modules
		// are in; switch_root leaves the stage.
		self, err := os.Executable()
		if err != nil {
			self = "/proc/self/exe"
		}
		prog.exitrd = sync.OnceValues(func() (shutdown.Exitrd, error) {
			x, err := shutdown.Install(shutdown.Dir, shutdown.Stage, self)
			if err == nil && x.Copied != nil {
				log.Printf("attach", "the exitrd is a copy of nbdroot on /run, the binary held twice until switch_root: %v", x.Copied)
			}
			return x, err
		})
	}

	cmdline := opts.Cmdline
	if cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return fail("config", err)
		}
		cmdline = strings.TrimSpace(string(b))
	}
	res, err := config.Resolve(config.Sources{Cmdline: cmdline, ConfigPath: opts.ConfigPath, ReadFile: os.ReadFile})
	if err != nil {
		return fail("config", err)
	}
	spec := res.Spec
	policy = spec.Boot
	log.SetDebug(spec.Boot.Debug())
	// A debug boot says how the CPU spent the time from here to the root:
	// steps that overlap can gain no more than its idle time, and the
	// user/kernel split tells Go's work from the kernel's.
	reportCPU := func() {}
	if spec.Boot.Debug() {
		from := time.Now()
		if cpu0, err := bootlog.ReadCPUTime(); err == nil {
			reportCPU = func() {
				if cpu, err := bootlog.ReadCPUTime(); err == nil {
					d := cpu.Sub(cpu0)
					log.Debugf("", "the CPU was idle %.2fs, in user mode %.2fs and in the kernel %.2fs, of the %.2fs from the spec to the root",
						d.Idle.Seconds(), d.User.Seconds(), d.Kernel.Seconds(), time.Since(from).Seconds())
				}
			}
		}
	}

	// Everything before the modules: the exec of /init and the Go
	// runtime's start (the logger counts from the process's start), the
	// early mounts and the spec; in a retry, this attempt's share.
	var tl timeline
	if prog.mods == nil {
		tl.addDur("start", log.Elapsed())
	} else {
		tl.add("start", begun)
	}
	t := time.Now()
	if prog.mods == nil {
		prog.mods = kmod.New(log)
	}
	mods := prog.mods
	mods.Load("nbd")
	mods.Load(spec.Boot.Modules...)
	mods.Coldplug()
	tl.add("modules", t)
	log.Printf("modules", "%d loaded", mods.Loaded())
	if prog.exitrd != nil {
		// Made beside the network step: should it fall back to a copy
		// (8 MiB), beside the module loads that slowed them 2-3x (one
		// virtual CPU).
		go prog.exitrd()
	}
	// The root's filesystem driver, when the spec names it, loads while the
	// network and connect steps wait on the wire.
	rootMods := rootModules(spec.Root)
	fsLoaded := make(chan struct{})
	go func() {
		defer close(fsLoaded)
		mods.Load(rootMods...)
	}()

	t = time.Now()
	lease := prog.lease
	if lease == nil || !reflect.DeepEqual(prog.netSpec, spec.Network) {
		if lease, err = network.Up(ctx, log, spec.Network, network.Options{PredictableNames: !ifname.Disabled(cmdline)}); err != nil {
			return fail("network", err)
		}
		prog.netSpec, prog.lease = spec.Network, lease
	}
	if err := applyLease(&spec, lease); err != nil {
		return fail("network", err)
	}
	tl.add("network", t)

	t = time.Now()
	rep, err := attach(ctx, log, spec, lease, prog)
	if err != nil {
		return policy, keeperStepError(err)
	}
	tl.addDur("keeper", rep.Startup)
	tl.addDur("connect", rep.Connect)
	tl.addDur("attach", time.Since(t)-rep.Startup-rep.Connect)
	dev := rep.Device
	log.Printf("attach", "%s is export %q (%d bytes) from %s, keeper pid %d", nbddev.Path(dev), rep.Export.Name, rep.Export.Size, rep.Endpoint, rep.Pid)

	t = time.Now()
	rootDev, err := RootDevice(ctx, dev, spec.Root)
	if err != nil {
		return fail("mount", err)
	}
	fstype := spec.Root.FSType
	if fstype == "" {
		if fstype, err = DetectFS(rootDev); err != nil {
			return fail("mount", err)
		}
	}
	<-fsLoaded
	mods.Load(fstype) // a no-op unless it was detected just now
	if err := MountRoot(log, rootDev, fstype, spec.Root); err != nil {
		return fail("mount", err)
	}
	tl.add("mount", t)
	init, err := FindInit(NewRoot, spec.Root.Init)
	if err != nil {
		return fail("switch_root", err)
	}
	if files, err := network.Handoff(NewRoot, "/run", lease); err != nil {
		log.Errorf("switch_root", "network hand-off: %v", err)
	} else if len(files) > 0 {
		log.Printf("network", "the root's network stack keeps %s: wrote /run/%s", lease.Interface, strings.Join(files, ", /run/"))
	}
	args := initArgs(res, opts)
	reportCPU()
	log.Printf("", "root ready in %.2fs (%s); exec %s", log.Elapsed().Seconds(), tl, init)
	restoreKmsg() // the real system's /dev/kmsg rate limit, as it was
	// The root's keeper frees the initramfs once the init runs; PID 1
	// does before, as switch_root does, when no keeper will.
	free := prog.keeper == nil || !prog.keeperFrees || !keeper.Alive(prog.keeper.Pid)
	err = SwitchRoot(log, NewRoot, init, args, initEnv(os.Environ()), free)
	return fail("switch_root", err)
}

// initArgs returns the real init's arguments. The kernel decided them when
// it started nbdroot (words after "--" and bare words it does not know,
// such as "single"), so PID 1's own arguments win, unless the TOML file set
// root.init_args or the command line is not the kernel's (a retry with a new
// one, or `nbdroot boot --cmdline`).
func initArgs(res *config.Resolved, opts Options) []string {
	origin := res.Origin["root.init_args"]
	fromFile := res.ConfigFile != "" && strings.HasPrefix(origin, res.ConfigFile)
	if opts.Cmdline == "" && !fromFile {
		return opts.InitArgs
	}
	return res.Spec.Root.InitArgs
}

// attach starts the keeper for spec, which keeps lease too, or reuses the
// device an earlier attempt attached if it is still live and was attached
// for the same server and device settings.
func attach(ctx context.Context, log *bootlog.Logger, spec config.Spec, lease *network.Lease, prog *Progress) (*keeper.Report, error) {
	var sys nbddev.Sysfs
	if prog.keeper != nil {
		same := reflect.DeepEqual(prog.keepSpec.Server, spec.Server) && reflect.DeepEqual(prog.keepSpec.TLS, spec.TLS) &&
			reflect.DeepEqual(prog.keepSpec.Device, spec.Device)
		if same && sys.Live(prog.keeper.Device) && keeper.Alive(prog.keeper.Pid) {
			log.Printf("attach", "%s is still attached from the last attempt", nbddev.Path(prog.keeper.Device))
			rep := *prog.keeper
			rep.Connect, rep.Attach = 0, 0
			return &rep, nil
		}
		unmountLeftovers() // the last attempt's root, if it got that far
		if err := keeper.Detach(ctx, prog.keeper.Device, true); err != nil {
			log.Errorf("attach", "detaching the last attempt's device: %v", err)
		}
		prog.keeper = nil
	}
	dev := spec.Device.Index
	if dev == config.AutoIndex {
		var err error
		if dev, err = sys.FirstFree(); err != nil {
			return nil, err
		}
	}
	o := keeper.StartOptions{Console: os.Stderr, Lease: lease}
	var switched *os.File
	if prog.exitrd != nil {
		if x, err := prog.exitrd(); err != nil {
			log.Errorf("attach", "%v: the keeper runs from the initramfs, and shutdown cannot detach the root", err)
		} else {
			o.Root, o.Binary = shutdown.Dir, x.Binary
			if r, w, err := os.Pipe(); err == nil {
				o.Switched, switched = r, w
				defer r.Close()
			}
		}
	}
	rep, err := keeper.Start(ctx, log, spec, dev, o)
	if err != nil {
		if switched != nil {
			switched.Close() // the keeper is gone
		}
		return nil, err
	}
	if switched != nil {
		prog.switched = append(prog.switched, switched)
	}
	prog.keeperFrees = switched != nil
	prog.keepSpec, prog.keeper = spec, rep
	return rep, nil
}

// keeperStepError is the StepError of a failed attach: the keeper names
// the step that failed (keeper.Error); anything else failed in attach.
func keeperStepError(err error) *StepError {
	if ke := (*keeper.Error)(nil); errors.As(err, &ke) {
		return &StepError{Step: ke.Op, Err: ke.Err}
	}
	return &StepError{Step: "attach", Err: err}
}

// likelyFS is the filesystem a root without rootfstype= most likely has:
// the default of Debian's and Ubuntu's installers and of every image the
// tests build. (Fedora's roots are xfs or btrfs: rootfstype= spares them
// the guess.)
const likelyFS = "ext4"

// rootModules are the modules the root mount needs that are known before
// the device is attached, loaded while the network and connect steps wait
// on the wire. Without rootfstype=, that is likelyFS's: a guess that saves
// its load (0.2-0.3 s under emulation) from the mount step when right, and
// costs a module load in the background when wrong (the detected one
// still loads before the mount).
func rootModules(r config.Root) []string {
	m := []string{cmp.Or(r.FSType, likelyFS)}
	if r.Overlay == config.OverlayTmpfs {
		m = append(m, "overlay")
	}
	return m
}

// applyLease fills in what the spec left to DHCP: the root-path option
// (nbdroot=dhcp) and the DHCP server as the NBD server's host.
func applyLease(spec *config.Spec, l *network.Lease) error {
	if spec.Server.FromDHCP {
		if l.RootPath == "" {
			return errors.New("nbdroot=dhcp, but the DHCP server sent no root-path (option 17)")
		}
		t, err := config.ParseRootPath(l.RootPath)
		if err != nil {
			return err
		}
		spec.Server.Endpoints = t.Server.Endpoints
		spec.TLS.Enabled = spec.TLS.Enabled || t.TLS.Enabled
		if t.Device.Index != config.AutoIndex {
			spec.Device.Index = t.Device.Index
		}
	}
	for i := range spec.Server.Endpoints {
		ep := &spec.Server.Endpoints[i]
		if ep.HostFromDHCP || (ep.Host == "" && ep.Socket == "") {
			if !l.DHCPServer.IsValid() {
				return errors.New("the server is the DHCP server, but no DHCP lease was obtained")
			}
			ep.Host, ep.HostFromDHCP = l.DHCPServer.String(), false
		}
	}
	return nil
}

// initEnv is the environment of the real init: what the kernel gave PID 1
// (key=value words of the command line), with the usual defaults.
func initEnv(env []string) []string {
	out := []string{}
	have := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NBDROOT_") {
			continue
		}
		have[k] = true
		out = append(out, kv)
	}
	for _, kv := range []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux", "HOME=/"} {
		k, _, _ := strings.Cut(kv, "=")
		if !have[k] {
			out = append(out, kv)
		}
	}
	return out
}

// timeline is the per-step durations of the summary line.
type timeline []stepTime

type stepTime struct {
	step string
	d    time.Duration
}

func (t *timeline) add(step string, since time.Time)    { t.addDur(step, time.Since(since)) }
func (t *timeline) addDur(step string, d time.Duration) { *t = append(*t, stepTime{step, d}) }

func (t timeline) String() string {
	var parts []string
	for _, s := range t {
		parts = append(parts, fmt.Sprintf("%s %.2fs", s.step, s.d.Seconds()))
	}
	return strings.Join(parts, ", ")
}
