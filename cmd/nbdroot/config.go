package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/nbdroot/nbdroot/config"
)

// configCheckDoc is the help of `nbdroot config check`.
const configCheckDoc = `Resolves the spec from a TOML file and a kernel command line (by default
` + config.DefaultConfigPath + ` if present and /proc/cmdline) and prints it as TOML,
each value annotated with where it came from. Problems are listed one per
line (exit status 2).`

// configCheckFlags registers the flags of `nbdroot config check`, which
// prints the resolved spec as TOML, each value annotated with where it came
// from. With problems it prints one per line on stderr and returns an
// error wrapping them all (exit status 2).
func configCheckFlags(fs *flag.FlagSet) runFunc {
	configPath := fs.String("config", "", "TOML `FILE` (default: nbdroot.config= on the command line, else "+config.DefaultConfigPath+" if present)")
	cmdline := fs.String("cmdline", "", "kernel command line `STRING` to check (default: /proc/cmdline)")
	cmdlineFile := fs.String("cmdline-file", "", "read the kernel command line from `FILE`")
	return func(ctx context.Context, sio stdio, args []string) error {
		if len(args) > 0 {
			return usagef("unexpected argument %q", args[0])
		}
		switch {
		case flagGiven(fs, "cmdline") && flagGiven(fs, "cmdline-file"):
			return usagef("--cmdline and --cmdline-file are exclusive")
		case flagGiven(fs, "config") && *configPath == "":
			return usagef("--config needs a file")
		}
		line := *cmdline
		if !flagGiven(fs, "cmdline") {
			b, err := os.ReadFile(cmp.Or(*cmdlineFile, "/proc/cmdline"))
			if err != nil {
				return fmt.Errorf("config check: reading the kernel command line: %w", err)
			}
			line = string(b)
		}
		res, err := config.Resolve(config.Sources{Cmdline: line, ConfigPath: *configPath, ReadFile: os.ReadFile})
		if err != nil {
			return reportSpecErrors(sio, err)
		}
		_, err = fmt.Fprint(sio.out, res.Format())
		return err
	}
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
