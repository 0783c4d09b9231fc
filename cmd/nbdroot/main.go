// Command nbdroot boots Linux from a root filesystem served over NBD, and is
// the administrator's tool for NBD exports on a running system.
//
// As PID 1 of an initramfs (or as `nbdroot boot`) it runs the boot sequence in
// package boot. Started with argv[0] "@nbdroot" it is the keeper that holds a
// device (package keeper). Otherwise the first argument names a subcommand.
//
// Exit status: 0 on success, 1 on a runtime failure, 2 on a usage or spec
// error. Errors are one line on stderr starting with "nbdroot:".
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
)

// command is one subcommand.
type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	run     func(ctx context.Context, io stdio, args []string) error
}

// stdio is where a subcommand writes.
type stdio struct {
	out, err io.Writer
}

// commands is the subcommand table, in the order help lists them.
func commands() []command {
	return []command{
		{"boot", "[--cmdline STRING] [--config FILE]", "run the boot sequence (what PID 1 does)", runBoot},
		{"probe", "[TLS flags] [--timeout DUR] [--json] SPEC", "negotiate with a server and describe one export", runProbe},
		{"list", "[TLS flags] [--timeout DUR] [--json] SPEC", "list a server's exports", runList},
		{"attach", "[TLS flags] [--interface I] [--connections N] [--read-only] [...] SPEC [/dev/nbdN]", "attach an export and keep it attached (a keeper process holds it)", runAttach},
		{"detach", "[--force] /dev/nbdN", "flush, disconnect cleanly and stop the keeper", runDetach},
		{"status", "[--json]", "list attached devices: server, export, size, interface, keeper, reconnects", runStatus},
		{"config", "check [--config FILE] [--cmdline STRING | --cmdline-file FILE]", "print the resolved spec with where each value came from", runConfig},
		{"mkinitramfs", "-o FILE [flags]", "write an initramfs with nbdroot as /init", runMkinitramfs},
	}
}

// usageError marks an error as the caller's fault (exit status 2).
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
	if isKeeper(argv) {
		// The keeper logs its own errors (console and /dev/kmsg).
		if runKeeper(argv) != nil {
			return 1
		}
		return 0
	}
	if os.Getpid() == 1 {
		// PID 1 never returns: runPID1 applies the failure policy itself.
		runPID1(sio)
		return 1
	}
	if len(argv) < 2 {
		printUsage(sio.err)
		return 2
	}
	name, args := argv[1], argv[2:]
	if name == "help" || name == "-h" || name == "--help" {
		printUsage(sio.out)
		return 0
	}
	for _, c := range commands() {
		if c.name == name {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return exitStatus(sio, c.run(ctx, sio, args))
		}
	}
	fmt.Fprintf(sio.err, "nbdroot: unknown command %q (try 'nbdroot help')\n", name)
	return 2
}

// exitStatus prints err as one line and maps it to an exit status.
func exitStatus(sio stdio, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(sio.err, "nbdroot: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || isSpecError(err) {
		return 2
	}
	return 1
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: nbdroot COMMAND [ARGS]")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n  %-12s   %s\n", c.name, c.args, "", c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "SPEC is HOST[:PORT]/NAME, [V6]:PORT/NAME, nbd://HOST[:PORT]/NAME, nbds://... (TLS) or nbd+unix:///NAME?socket=PATH.")
	fmt.Fprintln(w, "As PID 1 of an initramfs nbdroot boots; see README.md.")
}

// isSpecError reports whether err is a problem with the user's spec.
func isSpecError(err error) bool { return config.IsSpecError(err) }
