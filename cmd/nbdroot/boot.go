package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	stdlog "log"
	"os"
	"runtime/debug"
	"time"

	"github.com/nbdroot/nbdroot/boot"
	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
)

// bootFlags registers boot's flags. boot runs the boot sequence from a
// shell (to try a spec), or, with --retry from the rescue shell of a failed
// boot, asks PID 1 to boot again.
func bootFlags(fs *flag.FlagSet) runFunc {
	retry := fs.Bool("retry", false, "from the rescue shell: have PID 1 boot again, resuming where it failed")
	cmdline := fs.String("cmdline", "", "kernel command line `STRING` (default /proc/cmdline)")
	cfg := fs.String("config", "", "TOML `FILE` (default nbdroot.config= or "+config.DefaultConfigPath+")")
	return func(ctx context.Context, sio stdio, args []string) error {
		if *retry {
			if len(args) != 0 {
				return usagef("--retry: unexpected arguments %q", args)
			}
			if err := boot.RequestRetry(boot.RetryRequest{Cmdline: *cmdline, ConfigPath: *cfg}); err != nil {
				return err
			}
			_, err := fmt.Fprintln(sio.out, "nbdroot: asked PID 1 to boot again")
			return err
		}
		log := bootlog.New(sio.err, time.Now())
		quietStdlog(log)
		_, err := boot.Run(ctx, log, boot.Options{Cmdline: *cmdline, ConfigPath: *cfg, InitArgs: args}, &boot.Progress{})
		return err
	}
}

// runPID1 is main for PID 1. It never returns: it either execs the real
// init or applies the failure policy, and a panic is caught and treated as
// a failure, so the kernel never sees "Attempted to kill init". The failure
// policy returns only when the operator asks for a retry from the rescue
// shell; the next attempt resumes where the last one failed.
func runPID1(sio stdio) {
	log := bootlog.New(sio.err, bootlog.ProcessStart())
	quietStdlog(log)
	prog := &boot.Progress{}
	opts := boot.Options{InitArgs: os.Args[1:]}
	for {
		policy, err := attempt(log, opts, prog)
		req := boot.Fail(log, policy, err)
		opts.Cmdline, opts.ConfigPath = req.Cmdline, req.ConfigPath
	}
}

// attempt is one run of the boot, with panics turned into errors.
func attempt(log *bootlog.Logger, opts boot.Options, prog *boot.Progress) (policy config.Boot, err error) {
	policy = config.Defaults().Boot
	defer func() {
		if r := recover(); r != nil {
			log.Errorf("panic", "%v\n%s", r, debug.Stack())
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	p, err := boot.Run(context.Background(), log, opts, prog)
	if p.OnFailure != "" {
		policy = p
	}
	if err == nil {
		err = errors.New("boot returned without switching root")
	}
	return policy, err
}

// quietStdlog sends the standard logger (used by u-root's DHCP client) to
// debug lines of the boot log.
func quietStdlog(log *bootlog.Logger) {
	stdlog.SetFlags(0)
	stdlog.SetOutput(log.DebugWriter("dhcp"))
}
