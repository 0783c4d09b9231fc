package main

import (
	"bytes"
	"cmp"
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/nbdroot/nbdroot/dial"
)

// listFlags registers list's flags. list connects as boot would (TLS
// included), asks for structured replies as qemu-nbd --list does, asks the
// server for its exports (NBD_OPT_LIST, then NBD_OPT_INFO and
// NBD_OPT_LIST_META_CONTEXT on each) and prints them as a table followed by
// whether the server offers structured replies, or a JSON array with
// --json. The export name in SPEC, if any, is ignored.
func listFlags(fs *flag.FlagSet) runFunc {
	var f clientFlags
	f.register(fs)
	return func(ctx context.Context, sio stdio, args []string) error {
		spec, ep, err := f.onlyTarget(args)
		if err != nil {
			return err
		}
		d, err := dial.NewDialer(spec)
		if err != nil {
			return fmt.Errorf("list: %s: %w", ep, err)
		}
		exps, err := d.List(ctx, ep)
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		if f.json {
			infos := make([]exportInfo, 0, len(exps))
			for _, e := range exps {
				info := describe(e)
				metas := append([]string{}, e.MetaContexts...) // [] rather than null
				info.StructuredReplies, info.MetaContexts = &e.StructuredReplies, &metas
				infos = append(infos, info)
			}
			return writeJSON(sio.out, infos)
		}
		w := &errWriter{w: sio.out}
		if len(exps) == 0 {
			w.printf("%s lists no exports\n", ep.Server())
			return w.err
		}
		var table bytes.Buffer
		tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "NAME\tSIZE\tBLOCK SIZES\tFLAGS\tMETA CONTEXTS\tDESCRIPTION\n")
		for _, e := range exps {
			fmt.Fprintf(tw, "%s\t%d (%s)\t%s\t%s\t%s\t%s\n", displayName(e.Name), e.Size, humanSize(e.Size),
				blockSizes(e), flagsString(e.Flags), metaContexts(e.MetaContexts), e.Description)
		}
		tw.Flush() // into a buffer: no error
		// An empty last column leaves the padding of the one before it.
		for line := range strings.Lines(table.String()) {
			w.printf("%s\n", strings.TrimRight(line, " \n"))
		}
		w.printf("structured replies: %s\n", map[bool]string{false: "no", true: "yes"}[exps[0].StructuredReplies])
		return w.err
	}
}

// metaContexts formats an export's metadata contexts: comma-separated, or
// "none".
func metaContexts(names []string) string {
	var clean []string
	for _, n := range names {
		clean = append(clean, displayName(n)) // never empty
	}
	return cmp.Or(strings.Join(clean, ","), "none")
}
