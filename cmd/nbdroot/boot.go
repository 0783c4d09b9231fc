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
	"github.com/nbdroot/nbdroot/config"
)

// runBoot runs the boot sequence from a shell (for testing a spec, or from
// the rescue shell): the same as PID 1, except that a failure is returned
// instead of applying the failure policy.
func runBoot(ctx context.Context, sio stdio, args []string) error {
	fs := flag.NewFlagSet("boot", flag.ContinueOnError)
	fs.SetOutput(sio.err)
	cmdline := fs.String("cmdline", "", "kernel command line (default /proc/cmdline)")
	cfg := fs.String("config", "", "TOML file (default nbdroot.config= or "+config.DefaultConfigPath+")")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	log := boot.NewLogger(sio.err, time.Now())
	quietStdlog(log)
	_, err := boot.Run(ctx, log, boot.Options{Cmdline: *cmdline, ConfigPath: *cfg, InitArgs: fs.Args()})
	return err
}

func isKeeper(argv []string) bool { return boot.IsKeeper(argv) }

// runKeeper is the @nbdroot process (package boot, keeper.go).
func runKeeper(argv []string) error { return boot.RunKeeper() }

// runPID1 is main for PID 1. It never returns: it either execs the real
// init or applies the failure policy, and a panic is caught and treated as
// a failure, so the kernel never sees "Attempted to kill init".
func runPID1(sio stdio) {
	log := boot.NewLogger(sio.err, time.Now())
	quietStdlog(log)
	policy := config.Defaults().Boot
	defer func() {
		if r := recover(); r != nil {
			log.Errorf("panic", "%v\n%s", r, debug.Stack())
			boot.Fail(log, policy, fmt.Errorf("internal error: %v", r))
		}
	}()
	p, err := boot.Run(context.Background(), log, boot.Options{InitArgs: os.Args[1:]})
	if p.OnFailure != "" {
		policy = p
	}
	if err == nil {
		err = errors.New("boot returned without switching root")
	}
	boot.Fail(log, policy, err)
}

// quietStdlog sends the standard logger (used by u-root's DHCP client) to
// debug lines of the boot log.
func quietStdlog(log *boot.Logger) {
	stdlog.SetFlags(0)
	stdlog.SetOutput(log.DebugWriter("dhcp"))
}
