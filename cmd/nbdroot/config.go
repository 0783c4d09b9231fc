package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nbdroot/nbdroot/config"
)

// configCheckUsage is the synopsis of `nbdroot config check`.
const configCheckUsage = "usage: nbdroot config check [--config FILE] [--cmdline STRING | --cmdline-file FILE]"

// runConfig runs `nbdroot config check`: it resolves the spec from a TOML file
// and a kernel command line (by default /etc/nbdroot.toml if present and
// /proc/cmdline) and prints it as TOML, each value annotated with where it
// came from. With problems it prints one per line on stderr and returns an
// error wrapping them all (exit status 2).
func runConfig(ctx context.Context, sio stdio, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usagef("config: want a subcommand\n%s", configCheckUsage)
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	fs.SetOutput(sio.err)
	fs.Usage = func() {
		fmt.Fprintln(sio.err, configCheckUsage)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", "", "TOML `file` (default: nbdroot.config= on the command line, else "+config.DefaultConfigPath+" if present)")
	cmdline := fs.String("cmdline", "", "kernel command line to check (default: /proc/cmdline)")
	cmdlineFile := fs.String("cmdline-file", "", "read the kernel command line from `file`")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usagef("config check: %v", err)
	}
	if fs.NArg() > 0 {
		return usagef("config check: unexpected argument %q\n%s", fs.Arg(0), configCheckUsage)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["cmdline"] && set["cmdline-file"] {
		return usagef("config check: --cmdline and --cmdline-file are exclusive")
	}
	line := *cmdline
	if !set["cmdline"] {
		file := *cmdlineFile
		if file == "" {
			file = "/proc/cmdline"
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config check: reading the kernel command line: %w", err)
		}
		line = string(b)
	}
	if set["config"] && *configPath == "" {
		return usagef("config check: --config needs a file")
	}
	res, err := config.Resolve(config.Sources{Cmdline: line, ConfigPath: *configPath, ReadFile: os.ReadFile})
	if err != nil {
		return reportSpecErrors(sio, err)
	}
	fmt.Fprint(sio.out, res.Format())
	return nil
}

// specProblems summarizes several spec errors already printed one per line.
type specProblems struct {
	n   int
	err error
}

func (e *specProblems) Error() string {
	return fmt.Sprintf("config check: %d problems in the spec (listed above)", e.n)
}

func (e *specProblems) Unwrap() error { return e.err }

// reportSpecErrors prints a joined error list one error per line, each
// starting with "nbdroot: ", and returns a summary that still wraps them; a
// single error is returned as it is.
func reportSpecErrors(sio stdio, err error) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	}
	if len(list) <= 1 {
		return err
	}
	for _, e := range list {
		fmt.Fprintf(sio.err, "nbdroot: %v\n", e)
	}
	return &specProblems{n: len(list), err: err}
}
