package main

import (
	"context"
	"errors"
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

// runAttach implements `nbdroot attach [flags] SPEC [/dev/nbdN]`: like
// nbd-client, it attaches the export and leaves a keeper process holding
// the device; it prints the device.
func runAttach(ctx context.Context, sio stdio, args []string) error {
	var (
		iface    string
		conns    int
		ro       bool
		bs       uint
		reqTO    time.Duration
		deadConn time.Duration
		deadline time.Duration
	)
	f, err := parseClientFlags("attach", sio, args, func(fs *flag.FlagSet) {
		fs.StringVar(&iface, "interface", string(config.InterfaceAuto), "kernel interface: auto, netlink or ioctl")
		fs.IntVar(&conns, "connections", 1, "`N` connections (netlink, if the server allows several)")
		fs.BoolVar(&ro, "read-only", false, "attach read-only")
		fs.UintVar(&bs, "block-size", 0, "logical block size, a power of two 512..4096 (default: the server's minimum, at least 512)")
		fs.DurationVar(&reqTO, "request-timeout", 0, "per-request timeout (default: the kernel's; 5s with netlink)")
		fs.DurationVar(&deadConn, "dead-conn-timeout", 2*time.Minute, "how long I/O waits for a reconnect (netlink)")
		fs.DurationVar(&deadline, "deadline", 15*time.Second, "give up connecting after `DUR`")
	})
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if f.ep.Socket == "" && f.ep.Host == "" {
		return usagef("attach: SPEC names no server")
	}
	d := &f.spec.Device
	switch config.Interface(iface) {
	case config.InterfaceAuto, config.InterfaceNetlink, config.InterfaceIoctl:
		d.Interface = config.Interface(iface)
	default:
		return usagef("attach: --interface %q: want auto, netlink or ioctl", iface)
	}
	if conns < 1 || conns > config.MaxConnections {
		return usagef("attach: --connections %d: want 1 to %d", conns, config.MaxConnections)
	}
	if bs != 0 {
		if err := nbddev.CheckBlockSize(uint64(bs)); err != nil {
			return usagef("attach: --block-size: %v", err)
		}
	}
	d.Connections, d.ReadOnly, d.BlockSize = conns, ro, uint32(bs)
	d.Timeout, d.DeadConnTimeout = reqTO.Round(time.Second), deadConn.Round(time.Second)
	f.spec.Server.Deadline = deadline

	log := bootlog.New(sio.err, time.Now())
	log.SetQuiet(true)
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		kmod.New(log).Load("nbd")
	}
	index := config.AutoIndex
	switch len(f.rest) {
	case 0:
		if index, err = (nbddev.Sysfs{}).FirstFree(); err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	case 1:
		if index, err = deviceIndex(f.rest[0]); err != nil {
			return err
		}
		if (nbddev.Sysfs{}).InUse(index) {
			return fmt.Errorf("attach: %s is in use", nbddev.Path(index))
		}
	default:
		return usagef("attach: want SPEC [/dev/nbdN], got %d arguments after SPEC", len(f.rest))
	}
	rep, err := keeper.Start(ctx, log, f.spec, index, nil)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	if f.json {
		return writeJSON(sio.out, rep)
	}
	_, err = fmt.Fprintln(sio.out, nbddev.Path(rep.Device))
	return err
}

// runDetach implements `nbdroot detach [--force] /dev/nbdN`.
func runDetach(ctx context.Context, sio stdio, args []string) error {
	fs := flag.NewFlagSet("nbdroot detach", flag.ContinueOnError)
	fs.SetOutput(sio.err)
	force := fs.Bool("force", false, "detach even if the device is mounted")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("detach: want one device (/dev/nbdN), got %d arguments", fs.NArg())
	}
	index, err := deviceIndex(fs.Arg(0))
	if err != nil {
		return err
	}
	return keeper.Detach(ctx, index, *force)
}

// runStatus implements `nbdroot status [--json]`.
func runStatus(ctx context.Context, sio stdio, args []string) error {
	fs := flag.NewFlagSet("nbdroot status", flag.ContinueOnError)
	fs.SetOutput(sio.err)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() != 0 {
		return usagef("status: takes no arguments")
	}
	list, err := keeper.Status()
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		if list == nil {
			list = []keeper.DeviceStatus{}
		}
		return writeJSON(sio.out, list)
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
