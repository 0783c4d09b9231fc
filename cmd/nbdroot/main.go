// Command nbdroot boots Linux from a root filesystem served over NBD, and is
// the administrator's tool for NBD exports on a running system.
//
// As PID 1 of an initramfs (or as `nbdroot boot`) it runs the boot sequence in
// package boot; as /shutdown, executed by systemd-shutdown in the exitrd, it
// detaches the root at the very end (package shutdown). Started by a keeper's
// starter it is the keeper that holds a device (package keeper). Otherwise the first argument names a subcommand, one
// row of the table in commands.go; `nbdroot help` and every -h are printed
// from that table.
//
// Exit status: 0 on success (-h and help included, which print on stdout), 1
// on a runtime failure, 2 on a usage or spec error. Errors are one line on
// stderr starting with "nbdroot:"; a usage error is always
// "nbdroot: COMMAND: what is wrong (try 'nbdroot help COMMAND')".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/keeper"
	"github.com/nbdroot/nbdroot/shutdown"
)

// stdio is where a subcommand writes.
type stdio struct {
	out, err io.Writer
}

// usageError is the caller's mistake (exit status 2). Its message does not
// name the command: run adds the name, once, when it prints the error.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usageError.
func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func main() {
	os.Exit(run(os.Args, stdio{os.Stdout, os.Stderr}))
}

// run dispatches on argv and returns the exit status.
func run(argv []string, sio stdio) int {
	if os.Getpid() == 1 && shutdown.IsProgram(argv[0]) {
		runShutdown(sio, argv) // never returns
	}
	if keeper.Is() {
		// The keeper logs its own errors (console and /dev/kmsg).
		if keeper.Main() != nil {
			return 1
		}
		return 0
	}
	if os.Getpid() == 1 {
		// PID 1 never returns: runPID1 applies the failure policy itself.
		runPID1(sio)
		return 1
	}
	args := argv[1:]
	if len(args) == 0 {
		return exitStatus(sio, "", usagef("want a command"))
	}
	if isHelp(args[0]) {
		return exitStatus(sio, "", help(sio.out, args[1:]))
	}
	c, rest, group := lookup(args)
	switch {
	case c != nil:
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return exitStatus(sio, c.name, c.execute(ctx, sio, rest))
	case len(group) > 0 && len(args) > 1 && isHelp(args[1]):
		return exitStatus(sio, args[0], printHelp(sio.out, group))
	case len(group) > 0:
		return exitStatus(sio, args[0], wantSubcommand(args, group))
	}
	return exitStatus(sio, "", usagef("unknown command %q", args[0]))
}

// exitStatus prints err as one line on stderr and maps it to an exit status.
// name is the command that failed: a usage error is printed with it and a
// pointer to its help.
func exitStatus(sio stdio, name string, err error) int {
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue) && name == "":
		fmt.Fprintf(sio.err, "nbdroot: %v (try 'nbdroot help')\n", err)
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(sio.err, "nbdroot: %s: %v (try 'nbdroot help %s')\n", name, err, name)
		return 2
	}
	fmt.Fprintf(sio.err, "nbdroot: %v\n", err)
	if config.IsSpecError(err) {
		return 2
	}
	return 1
}
