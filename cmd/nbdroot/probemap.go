package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/negotiate"
)

// mapSynopsis is the synopsis of probe's map flags.
const mapSynopsis = "[--map [--context NAME] [--totals]]"

// mapDoc is what probe's help says about --map.
const mapDoc = `--map prints the export's allocation map as nbdinfo --map does, asking
NBD_CMD_BLOCK_STATUS over structured replies on a connection of its own that
never goes to the kernel. Each line is OFFSET LENGTH FLAGS TYPE, adjacent
extents of the same type merged; under base:allocation TYPE is data (0),
hole (1), zero (2) or hole,zero (3). --totals prints bytes and percentage
per type instead; --context and --totals imply --map. --timeout bounds each
reply too.`

// maxTypes bounds the distinct extent types --totals counts.
const maxTypes = 1024

// probeMap opens a query session on ep and prints its map to sio.out.
func probeMap(ctx context.Context, sio stdio, spec config.Spec, ep config.Endpoint, metaContext string, asJSON, totals bool) error {
	d, err := dial.NewDialer(spec)
	if err != nil {
		return fmt.Errorf("probe: %s: %w", ep, err)
	}
	q, err := d.Query(ctx, ep, metaContext)
	if err != nil {
		return mapError(ep, err)
	}
	// The map has its answer or its error; a failed NBD_CMD_DISC only
	// means the server hung up first.
	defer q.Close()

	exp := q.Export()
	out := newMapWriter(sio.out, metaContext, exp.Size, asJSON, totals)
	if err := q.Map(ctx, 0, exp.Size, out.add); err != nil {
		return cmp.Or(out.err, fmt.Errorf("probe: %s: %w", ep, err))
	}
	return out.finish()
}

// mapError explains why a query session could not be opened.
func mapError(ep config.Endpoint, err error) error {
	var oe *negotiate.OptionError
	switch {
	case errors.Is(err, negotiate.ErrNoStructuredReplies) && errors.As(err, &oe):
		why := negotiate.ReplyName(oe.Code)
		if msg := strings.TrimSpace(oe.Message); msg != "" {
			why += ": " + strconv.Quote(msg)
		}
		return fmt.Errorf("probe: server %s does not support structured replies (%s: %s); --map needs them",
			ep.Server(), negotiate.OptionName(oe.Option), why)
	case errors.Is(err, negotiate.ErrNoStructuredReplies):
		return fmt.Errorf("probe: %w; --map needs structured replies", err)
	case errors.Is(err, negotiate.ErrNoMetaContext):
		return fmt.Errorf("probe: %w ('nbdroot list %s' shows the contexts it offers)", err, ep.Server())
	}
	return fmt.Errorf("probe: %w", err)
}

// mapWriter merges adjacent extents of the same type and prints them as
// they come (text or JSON lines), or sums them per type for --totals.
type mapWriter struct {
	w       *bufio.Writer
	context string
	size    uint64
	width   int // of the offset and length columns
	json    bool
	totals  bool

	cur  negotiate.Extent // the extent being merged
	have bool
	n    int               // extents printed
	sums map[uint32]uint64 // --totals: bytes per flags
	err  error             // the failure to write, which ends Map as it is
}

func newMapWriter(w io.Writer, metaContext string, size uint64, asJSON, totals bool) *mapWriter {
	return &mapWriter{
		w:       bufio.NewWriter(w),
		context: metaContext,
		size:    size,
		width:   max(10, len(strconv.FormatUint(size, 10))),
		json:    asJSON,
		totals:  totals,
		sums:    map[uint32]uint64{},
	}
}

// add takes the next extent from Map.
func (m *mapWriter) add(e negotiate.Extent) error {
	if m.context == negotiate.ContextBaseAllocation {
		// The spec reserves the other bits; clients must ignore them.
		e.Flags &= negotiate.StateHole | negotiate.StateZero
	}
	if m.have && m.cur.Flags == e.Flags && m.cur.Offset+m.cur.Length == e.Offset {
		m.cur.Length += e.Length
		return nil
	}
	if m.have {
		if err := m.emit(m.cur); err != nil {
			return err
		}
	}
	m.cur, m.have = e, true
	return nil
}

// extentJSON is one extent as probe --map --json prints it; the field
// names are a stable interface.
type extentJSON struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
	Type   string `json:"type"`
	Flags  uint32 `json:"flags"`
}

// totalJSON is one type as probe --totals --json prints it.
type totalJSON struct {
	Type    string  `json:"type"`
	Flags   uint32  `json:"flags"`
	Length  uint64  `json:"length"`
	Percent float64 `json:"percent"`
}

// emit prints one merged extent, or counts it.
func (m *mapWriter) emit(e negotiate.Extent) error {
	if m.totals {
		if _, ok := m.sums[e.Flags]; !ok && len(m.sums) >= maxTypes {
			return fmt.Errorf("more than %d distinct extent types", maxTypes)
		}
		m.sums[e.Flags] += e.Length
		return nil
	}
	var err error
	if m.json {
		lead := ",\n  "
		if m.n == 0 {
			lead = "[\n  "
		}
		b, _ := json.Marshal(extentJSON{e.Offset, e.Length, extentType(m.context, e.Flags), e.Flags})
		_, err = fmt.Fprintf(m.w, "%s%s", lead, b)
	} else {
		line := fmt.Sprintf("%*d  %*d  %3d  %s", m.width, e.Offset, m.width, e.Length, e.Flags, extentType(m.context, e.Flags))
		_, err = fmt.Fprintln(m.w, strings.TrimRight(line, " "))
	}
	m.n++
	if err != nil {
		m.err = fmt.Errorf("writing the map: %w", err)
	}
	return m.err
}

// finish prints the last extent, or the totals, and flushes.
func (m *mapWriter) finish() error {
	if m.have {
		if err := m.emit(m.cur); err != nil {
			return err
		}
	}
	switch {
	case m.totals:
		m.printTotals()
	case m.json && m.n == 0:
		fmt.Fprint(m.w, "[]\n")
	case m.json:
		fmt.Fprint(m.w, "\n]\n")
	}
	if err := m.w.Flush(); err != nil {
		return fmt.Errorf("writing the map: %w", err)
	}
	return nil
}

// printTotals prints bytes and percentage per type, in order of flags.
func (m *mapWriter) printTotals() {
	list := make([]totalJSON, 0, len(m.sums))
	for _, f := range slices.Sorted(maps.Keys(m.sums)) {
		pct := 0.0
		if m.size > 0 {
			pct = 100 * float64(m.sums[f]) / float64(m.size)
		}
		list = append(list, totalJSON{extentType(m.context, f), f, m.sums[f], pct})
	}
	if m.json {
		b, _ := json.MarshalIndent(list, "", "  ")
		fmt.Fprintf(m.w, "%s\n", b)
		return
	}
	for _, t := range list {
		line := fmt.Sprintf("%*d  %5.1f%%  %3d  %s", m.width, t.Length, t.Percent, t.Flags, t.Type)
		fmt.Fprintln(m.w, strings.TrimRight(line, " "))
	}
}

// extentType names an extent's flags in a metadata context as nbdinfo
// --map does: base:allocation's data, hole, zero or hole,zero; QEMU's
// dirty bitmaps' clean or dirty; QEMU's allocation depth. Other contexts'
// flags have no name ("").
func extentType(metaContext string, flags uint32) string {
	switch {
	case metaContext == negotiate.ContextBaseAllocation:
		return [...]string{"data", "hole", "zero", "hole,zero"}[flags&(negotiate.StateHole|negotiate.StateZero)]
	case strings.HasPrefix(metaContext, "qemu:dirty-bitmap:"):
		if flags&1 != 0 {
			return "dirty"
		}
		return "clean"
	case metaContext == "qemu:allocation-depth":
		switch flags {
		case 0:
			return "unallocated"
		case 1:
			return "local"
		}
		return fmt.Sprintf("backing depth %d", flags)
	}
	return ""
}
