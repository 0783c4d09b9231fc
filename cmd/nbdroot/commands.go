package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// command is one subcommand: a row of the table that dispatch, -h,
// `nbdroot help` and README.md's synopses (checked by a test) all follow.
type command struct {
	// name follows "nbdroot": one word, or two for a command of a group
	// ("config check").
	name string
	// synopsis is each form of the arguments after the name, as README.md's
	// Subcommands section shows it.
	synopsis []string
	// summary is one line saying what the command does.
	summary string
	// doc is more for the command's own help, if it needs it.
	doc string
	// flags registers the command's flags on fs and returns its run, which
	// reads them once fs has parsed the command line.
	flags func(fs *flag.FlagSet) runFunc
}

// runFunc runs a command with the arguments left after its flags.
type runFunc func(ctx context.Context, sio stdio, args []string) error

// commands is the subcommand table, in the order help lists them.
func commands() []command {
	return []command{
		{name: "boot", flags: bootFlags,
			synopsis: []string{"[--cmdline STRING] [--config FILE]", "--retry [--cmdline STRING] [--config FILE]"},
			summary:  "run the boot sequence, as PID 1 does; --retry: have PID 1 boot again"},
		{name: "probe", flags: probeFlags,
			synopsis: []string{clientSynopsis + " " + mapSynopsis + " SPEC"},
			summary:  "negotiate with a server and describe one export, or print its allocation map",
			doc:      specDoc + "\n" + tlsDoc + "\n\n" + mapDoc},
		{name: "list", flags: listFlags,
			synopsis: []string{clientSynopsis + " SPEC"},
			summary:  "list a server's exports with their metadata contexts (the export name in SPEC is ignored)",
			doc:      specDoc + "\n" + tlsDoc},
		{name: "attach", flags: attachFlags,
			synopsis: []string{"[list's flags] [--interface auto|netlink|ioctl] [--connections N] [--read-only] [--swap] [--block-size N]" +
				" [--request-timeout DUR] [--dead-conn-timeout DUR] [--deadline DUR] SPEC [/dev/nbdN]"},
			summary: "attach an export, held by a keeper process, and print the device",
			doc:     specDoc + "\n" + tlsDoc},
		{name: "detach", flags: detachFlags,
			synopsis: []string{"[--force] /dev/nbdN"},
			summary:  "flush, disconnect cleanly and stop the keeper"},
		{name: "status", flags: statusFlags,
			synopsis: []string{"[--json]"},
			summary:  "list attached devices: server, export, size, interface, keeper, reconnects"},
		{name: "config check", flags: configCheckFlags,
			synopsis: []string{"[--config FILE] [--cmdline STRING | --cmdline-file FILE]"},
			summary:  "print the resolved spec with where each value came from",
			doc:      configCheckDoc},
		{name: "mkinitramfs", flags: mkinitramfsFlags,
			synopsis: []string{
				"-o FILE [--kver VERSION | --kernel PATH] [--config FILE] [--module NAME]... [--file SRC[:DST]]..." +
					" [--shell PATH] [--compress gzip|zstd|xz|none] [--modules-dir DIR] [--binary PATH]",
				"--base-only -o FILE [same flags, no --binary]",
				"--modules-only DIR [--kver VERSION | --kernel PATH] [--modules-dir DIR] [--module NAME]...",
			},
			summary: "write an initramfs with nbdroot as /init",
			doc:     mkinitramfsDoc},
	}
}

// specDoc says what SPEC may be.
const specDoc = "SPEC is HOST[:PORT][/NAME], [V6]:PORT/NAME, nbd://HOST[:PORT]/NAME,\nnbds://... (TLS) or nbd+unix:///NAME?socket=PATH."

// lookup finds the command that args begin with and returns it with the
// arguments after its name. If args name only a group ("config"), it
// returns the group's commands instead.
func lookup(args []string) (c *command, rest []string, group []command) {
	for _, cmd := range commands() {
		words := strings.Fields(cmd.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return &cmd, args[len(words):], nil
		}
		if len(args) > 0 && len(words) > 1 && words[0] == args[0] {
			group = append(group, cmd)
		}
	}
	return nil, nil, group
}

// wantSubcommand is the usage error for a group named without one of its
// commands.
func wantSubcommand(args []string, group []command) error {
	var names []string
	for _, c := range group {
		names = append(names, strings.TrimPrefix(c.name, args[0]+" "))
	}
	if len(args) == 1 {
		return usagef("want a subcommand: %s", strings.Join(names, ", "))
	}
	return usagef("want a subcommand (%s), got %q", strings.Join(names, ", "), args[1])
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "-help" || arg == "--help"
}

// newFlagSet returns c's flag set. It parses quietly: a bad flag becomes
// one usage error, and -h prints c's help on stdout.
func (c *command) newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("nbdroot "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// execute parses c's flags and runs it.
func (c *command) execute(ctx context.Context, sio stdio, args []string) error {
	fs := c.newFlagSet()
	run := c.flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return printHelp(sio.out, []command{*c})
		}
		return usageError{err}
	}
	return run(ctx, sio, fs.Args())
}

// help is `nbdroot help [COMMAND]`.
func help(w io.Writer, args []string) error {
	if len(args) == 0 {
		return printOverview(w)
	}
	c, rest, group := lookup(args)
	switch {
	case c != nil && len(rest) == 0:
		return printHelp(w, []command{*c})
	case len(group) > 0 && len(args) == 1:
		return printHelp(w, group)
	}
	return usagef("help: unknown command %q", strings.Join(args, " "))
}

// printOverview prints every command's synopsis and summary.
func printOverview(w io.Writer) error {
	p := &errWriter{w: w}
	p.printf("usage: nbdroot COMMAND [ARGS]\n\n")
	for _, c := range commands() {
		for _, form := range c.synopsis {
			p.printf("%s\n", strings.Join(wrapSynopsis("  nbdroot "+c.name, form), "\n"))
		}
		p.printf("      %s\n", c.summary)
	}
	p.printf("\n%s\n", specDoc)
	p.printf("'nbdroot help COMMAND' or 'nbdroot COMMAND -h' shows a command's flags.\n")
	p.printf("As PID 1 of an initramfs nbdroot boots; see README.md.\n")
	return p.err
}

// printHelp prints each command's synopsis, summary, doc and flags.
func printHelp(w io.Writer, cmds []command) error {
	p := &errWriter{w: w}
	for i, c := range cmds {
		if i > 0 {
			p.printf("\n")
		}
		lead := "usage: nbdroot "
		for _, form := range c.synopsis {
			p.printf("%s\n", strings.Join(wrapSynopsis(lead+c.name, form), "\n"))
			lead = "       nbdroot "
		}
		p.printf("\n%s\n", c.summary)
		if c.doc != "" {
			p.printf("\n%s\n", c.doc)
		}
		p.printf("\n")
		fs := c.newFlagSet()
		c.flags(fs)
		fs.SetOutput(p)
		fs.PrintDefaults()
	}
	return p.err
}

// synopsisWidth is where help wraps synopses.
const synopsisWidth = 80

// wrapSynopsis writes lead and form on lines of at most synopsisWidth
// columns, breaking only between bracketed groups; continuation lines are
// indented under the first argument.
func wrapSynopsis(lead, form string) []string {
	var lines []string
	line, n := lead, 0 // n counts the arguments on line
	for _, tok := range synopsisTokens(form) {
		if n > 0 && len(line)+1+len(tok) > synopsisWidth {
			lines = append(lines, line)
			line, n = strings.Repeat(" ", len(lead)), 0
		}
		line += " " + tok
		n++
	}
	return append(lines, line)
}

// synopsisTokens splits a synopsis at the spaces outside brackets.
func synopsisTokens(form string) []string {
	var toks []string
	depth := 0
	for _, f := range strings.Fields(form) {
		if depth != 0 {
			toks[len(toks)-1] += " " + f
		} else {
			toks = append(toks, f)
		}
		depth += strings.Count(f, "[") - strings.Count(f, "]")
	}
	return toks
}

// flagGiven reports whether the flag name was given on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// errWriter keeps the first write error, so a run of prints checks once.
type errWriter struct {
	w   io.Writer
	err error
}

// printf writes through Write, which keeps the first error.
func (w *errWriter) printf(format string, a ...any) { fmt.Fprintf(w, format, a...) }

// Write lets an errWriter be a flag set's output.
func (w *errWriter) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.w.Write(b)
	w.err = err
	return n, err
}
