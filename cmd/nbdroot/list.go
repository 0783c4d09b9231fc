package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/nbdroot/nbdroot/dial"
)

// listFlags registers list's flags. list connects as boot would (TLS
// included), asks the server for its exports (NBD_OPT_LIST, then
// NBD_OPT_INFO on each) and prints them as a table, or a JSON array with
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
				infos = append(infos, describe(e))
			}
			return writeJSON(sio.out, infos)
		}
		if len(exps) == 0 {
			_, err := fmt.Fprintf(sio.out, "%s lists no exports\n", ep.Server())
			return err
		}
		var table bytes.Buffer
		tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "NAME\tSIZE\tBLOCK SIZES\tFLAGS\tDESCRIPTION\n")
		for _, e := range exps {
			fmt.Fprintf(tw, "%s\t%d (%s)\t%s\t%s\t%s\n", displayName(e.Name), e.Size, humanSize(e.Size),
				blockSizes(e), flagsString(e.Flags), e.Description)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		// An empty last column leaves the padding of the one before it.
		w := &errWriter{w: sio.out}
		for line := range strings.Lines(table.String()) {
			w.printf("%s\n", strings.TrimRight(line, " \n"))
		}
		return w.err
	}
}
