package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/keeper"
	"github.com/nbdroot/nbdroot/kmod"
	"github.com/nbdroot/nbdroot/nbddev"
)

// attachKey is one of attach's own flags: each sets one spec key, with the
// checks the key has in nbdroot.toml.
type attachKey struct{ flag, key, usage string }

// attachKeys is the table of attach's own flags.
func attachKeys() []attachKey {
	return []attachKey{
		{"interface", "device.interface", "kernel interface `auto|netlink|ioctl`"},
		{"connections", "device.connections", "`N` connections (netlink, if the server allows several)"},
		{"read-only", "device.read_only", "attach read-only"},
		{"swap", "device.swap", "the device holds swap: the keeper locks itself in memory (nbd-client's -swap)"},
		{"block-size", "device.block_size", "logical block size `N`, a power of two 512..4096 (default: the server's minimum, at least 512)"},
		{"request-timeout", "device.timeout", "per-request timeout `DUR` (default: the kernel's; 5s with netlink)"},
		{"dead-conn-timeout", "device.dead_conn_timeout", "how long I/O waits for a reconnect, `DUR` (netlink)"},
		{"deadline", "server.deadline", "give up connecting after `DUR`"},
	}
}

// attachCmd holds attach's flags.
type attachCmd struct {
	client clientFlags
	// keys holds the values of attachKeys: the spec's defaults, then
	// attach's own, then the flags'.
	keys config.Spec
}

// attachFlags registers attach's flags. Like nbd-client, attach attaches
// the export and leaves a keeper process holding the device; it prints the
// device.
func attachFlags(fs *flag.FlagSet) runFunc { return newAttach(fs).run }

// newAttach registers attach's flags on fs: probe's, and those of
// attachKeys, each parsed and checked by the config schema as its key is.
func newAttach(fs *flag.FlagSet) *attachCmd {
	a := &attachCmd{keys: config.Defaults()}
	a.keys.Server.Deadline = 15 * time.Second // attach's own default
	a.client.register(fs)
	zero := config.Spec{}
	for _, k := range attachKeys() {
		v := a.keys.Flag(k.key)
		fs.Var(v, k.flag, k.usage)
		if v.String() == zero.Flag(k.key).String() {
			// Help leaves a zero default unsaid, as for the flag package's
			// own types.
			fs.Lookup(k.flag).DefValue = ""
		}
	}
	return a
}

// spec returns the spec attach hands the keeper: SPEC's, with the values
// of attachKeys.
func (a *attachCmd) spec(arg string) (config.Spec, config.Endpoint, error) {
	spec, ep, err := a.client.target(arg)
	if err != nil {
		return config.Spec{}, ep, err
	}
	if ep.Socket == "" && ep.Host == "" {
		return config.Spec{}, ep, usagef("SPEC names no server")
	}
	for _, k := range attachKeys() {
		if err := spec.Set(k.key, a.keys.Flag(k.key).String()); err != nil {
			return config.Spec{}, ep, fmt.Errorf("--%s: %w", k.flag, err)
		}
	}
	return spec, ep, nil
}

func (a *attachCmd) run(ctx context.Context, sio stdio, args []string) error {
	index := config.AutoIndex
	switch len(args) {
	case 0:
		return errNoSpec
	case 1:
	case 2:
		var err error
		if index, err = deviceIndex(args[1]); err != nil {
			return err
		}
	default:
		return usagef("want SPEC [/dev/nbdN], got %d arguments after SPEC", len(args)-1)
	}
	spec, _, err := a.spec(args[0])
	if err != nil {
		return err
	}

	log := bootlog.New(sio.err, time.Now())
	log.SetQuiet(true)
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		kmod.New(log).Load("nbd")
	}
	if index == config.AutoIndex {
		if index, err = (nbddev.Sysfs{}).FirstFree(); err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	} else if (nbddev.Sysfs{}).InUse(index) {
		return fmt.Errorf("attach: %s is in use", nbddev.Path(index))
	}
	rep, err := keeper.Start(ctx, log, spec, index, keeper.StartOptions{})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	if a.client.json {
		return writeJSON(sio.out, rep)
	}
	_, err = fmt.Fprintln(sio.out, nbddev.Path(rep.Device))
	return err
}

// detachFlags registers detach's flags.
func detachFlags(fs *flag.FlagSet) runFunc {
	force := fs.Bool("force", false, "detach even if the device is mounted")
	return func(ctx context.Context, sio stdio, args []string) error {
		if len(args) != 1 {
			return usagef("want one device (/dev/nbdN), got %d arguments", len(args))
		}
		index, err := deviceIndex(args[0])
		if err != nil {
			return err
		}
		return keeper.Detach(ctx, index, *force)
	}
}

// statusFlags registers status's flags.
func statusFlags(fs *flag.FlagSet) runFunc {
	asJSON := fs.Bool("json", false, "print JSON")
	return func(ctx context.Context, sio stdio, args []string) error {
		if len(args) != 0 {
			return usagef("takes no arguments")
		}
		list, err := keeper.Status()
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		if *asJSON {
			return writeJSON(sio.out, append([]keeper.DeviceStatus{}, list...)) // [] rather than null
		}
		if len(list) == 0 {
			_, err := fmt.Fprintln(sio.out, "no nbd device is attached")
			return err
		}
		tw := tabwriter.NewWriter(sio.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tSERVER\tEXPORT\tSIZE\tINTERFACE\tCONN\tTLS\tKEEPER\tRECONNECTS\tSTATE")
		for _, s := range list {
			if !s.Managed {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t%s (not nbdroot's)\n", s.Device, connState(s))
				continue
			}
			keeper := strconv.Itoa(s.Pid)
			if !s.KeeperAlive {
				keeper += " (gone)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%v\t%s\t%d\t%s\n", s.Device, s.Server, s.Export,
				humanSize(s.Size), s.Interface, s.Connections, s.TLS, keeper, s.Reconnects, connState(s))
		}
		return tw.Flush()
	}
}

func connState(s keeper.DeviceStatus) string {
	if s.Connected {
		return "connected"
	}
	return "disconnected"
}

// deviceIndex parses /dev/nbdN or nbdN.
func deviceIndex(s string) (int, error) {
	n, ok := strings.CutPrefix(strings.TrimPrefix(s, "/dev/"), "nbd")
	i, err := strconv.Atoi(n)
	if !ok || err != nil || i < 0 || i > config.MaxIndex {
		return 0, usagef("%q is not an nbd device (want /dev/nbdN)", s)
	}
	return i, nil
}
