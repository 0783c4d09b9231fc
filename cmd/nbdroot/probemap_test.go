package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/negotiate"
)

func TestExtentType(t *testing.T) {
	for _, tc := range []struct {
		context string
		flags   uint32
		want    string
	}{
		{negotiate.ContextBaseAllocation, 0, "data"},
		{negotiate.ContextBaseAllocation, 1, "hole"},
		{negotiate.ContextBaseAllocation, 2, "zero"},
		{negotiate.ContextBaseAllocation, 3, "hole,zero"},
		{negotiate.ContextBaseAllocation, 0xfffffffc, "data"}, // reserved bits ignored
		{"qemu:dirty-bitmap:b0", 0, "clean"},
		{"qemu:dirty-bitmap:b0", 1, "dirty"},
		{"qemu:allocation-depth", 0, "unallocated"},
		{"qemu:allocation-depth", 1, "local"},
		{"qemu:allocation-depth", 3, "backing depth 3"},
		{"x-test:thing", 7, ""},
	} {
		if got := extentType(tc.context, tc.flags); got != tc.want {
			t.Errorf("extentType(%q, %d) = %q, want %q", tc.context, tc.flags, got, tc.want)
		}
	}
}

// TestMapWriter feeds extents as Map delivers them and checks what each
// output prints: merged like nbdinfo --map, text, JSON and totals.
func TestMapWriter(t *testing.T) {
	const size = 16 << 20
	in := []negotiate.Extent{
		{Offset: 0, Length: 1 << 20, Flags: 3},
		{Offset: 1 << 20, Length: 1 << 20, Flags: 3 | 1<<7}, // a reserved bit: the same type
		{Offset: 2 << 20, Length: 4096, Flags: 0},
		{Offset: 2<<20 + 4096, Length: 4096, Flags: 0},
		{Offset: 2<<20 + 8192, Length: 14<<20 - 8192, Flags: 2},
	}
	for _, tc := range []struct {
		name          string
		json, totals  bool
		context       string
		want          string
		extentsAsJSON bool
	}{{
		name: "text",
		want: "" +
			"         0     2097152    3  hole,zero\n" +
			"   2097152        8192    0  data\n" +
			"   2105344    14671872    2  zero\n",
	}, {
		name: "json",
		json: true,
		want: "[\n" +
			`  {"offset":0,"length":2097152,"type":"hole,zero","flags":3},` + "\n" +
			`  {"offset":2097152,"length":8192,"type":"data","flags":0},` + "\n" +
			`  {"offset":2105344,"length":14671872,"type":"zero","flags":2}` + "\n]\n",
	}, {
		name:   "totals",
		totals: true,
		want: "" +
			"      8192    0.0%    0  data\n" +
			"  14671872   87.5%    2  zero\n" +
			"   2097152   12.5%    3  hole,zero\n",
	}, {
		name:    "another context keeps every bit",
		context: "x-test:thing",
		want: "" +
			"         0     1048576    3\n" +
			"   1048576     1048576  131\n" +
			"   2097152        8192    0\n" +
			"   2105344    14671872    2\n",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.context == "" {
				tc.context = negotiate.ContextBaseAllocation
			}
			var out bytes.Buffer
			m := newMapWriter(&out, tc.context, size, tc.json, tc.totals)
			for _, e := range in {
				if err := m.add(e); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.finish(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("output\n%s\nwant\n%s", out.String(), tc.want)
			}
			if tc.json {
				var v []extentJSON
				if err := json.Unmarshal(out.Bytes(), &v); err != nil || len(v) != 3 {
					t.Errorf("not a JSON array of 3 extents: %v", err)
				}
			}
		})
	}

	// Nothing at all: an empty export.
	for _, asJSON := range []bool{false, true} {
		var out bytes.Buffer
		m := newMapWriter(&out, negotiate.ContextBaseAllocation, 0, asJSON, false)
		if err := m.finish(); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{false: "", true: "[]\n"}[asJSON]; out.String() != want {
			t.Errorf("json=%v, empty export: %q, want %q", asJSON, out.String(), want)
		}
	}

	// The totals' JSON, and its bound on distinct types.
	var out bytes.Buffer
	m := newMapWriter(&out, negotiate.ContextBaseAllocation, size, true, true)
	for _, e := range in {
		m.add(e)
	}
	if err := m.finish(); err != nil {
		t.Fatal(err)
	}
	var totals []totalJSON
	if err := json.Unmarshal(out.Bytes(), &totals); err != nil || len(totals) != 3 ||
		totals[2] != (totalJSON{"hole,zero", 3, 2 << 20, 12.5}) {
		t.Errorf("totals JSON %+v, %v:\n%s", totals, err, out.String())
	}
	m = newMapWriter(&out, "x-test:thing", math.MaxUint32, false, true)
	var err error
	for i := range uint32(maxTypes + 1) {
		if err = m.add(negotiate.Extent{Offset: uint64(i), Length: 1, Flags: i}); err != nil {
			break
		}
	}
	if err == nil {
		err = m.finish()
	}
	if err == nil || !strings.Contains(err.Error(), "more than 1024 distinct extent types") {
		t.Errorf("%d distinct types: %v", maxTypes+1, err)
	}
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestMapWriterWriteError(t *testing.T) {
	m := newMapWriter(failWriter{}, negotiate.ContextBaseAllocation, 1<<20, false, false)
	m.add(negotiate.Extent{Offset: 0, Length: 1 << 20})
	if err := m.finish(); err == nil || !strings.Contains(err.Error(), "writing the map: disk full") {
		t.Errorf("finish: %v", err)
	}
}

// sparseWrites are the writes of the sparse test images.
var sparseWrites = []testrig.Write{
	{Offset: 1 << 20, Length: 64 << 10, Pattern: 0xab},
	{Offset: 10 << 20, Length: 2 << 20, Pattern: 0xcd},
	{Offset: 20 << 20, Length: 1 << 20, Zero: true},
	{Offset: 48 << 20, Length: 4096, Pattern: 1},
}

// TestProbeMapInterop runs `nbdroot probe --map --json` against qemu-nbd
// serving sparse raw and qcow2 images and nbdkit's sparse-random and data
// plugins, and compares the map with what `qemu-img map --output=json`
// reports for the same image (for nbdkit, through the server itself), both
// merged into runs of one type. --totals must add up to the size.
func TestProbeMapInterop(t *testing.T) {
	dir := t.TempDir()
	raw := testrig.SparseImage(t, filepath.Join(dir, "sparse.raw"), "raw", 64<<20, sparseWrites...)
	qcow := testrig.SparseImage(t, filepath.Join(dir, "sparse.qcow2"), "qcow2", 64<<20, sparseWrites...)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (*testrig.Server, []testrig.Allocation)
		path  string
	}{
		{"qemu-nbd raw", func(t *testing.T) (*testrig.Server, []testrig.Allocation) {
			want := testrig.Allocations(testrig.QemuImgMap(t, "-f", "raw", raw))
			return testrig.QemuNBD(t, raw, "disk", testrig.ReadOnly()), want
		}, "/disk"},
		{"qemu-nbd qcow2", func(t *testing.T) (*testrig.Server, []testrig.Allocation) {
			want := testrig.Allocations(testrig.QemuImgMap(t, "-f", "qcow2", qcow))
			return testrig.QemuNBD(t, qcow, "disk", testrig.Format("qcow2"), testrig.ReadOnly()), want
		}, "/disk"},
		{"nbdkit sparse-random", func(t *testing.T) (*testrig.Server, []testrig.Allocation) {
			s := testrig.Nbdkit(t, "sparse-random", "1G", "seed=1234")
			return s, testrig.Allocations(testrig.QemuImgMap(t, "nbd://"+s.Addr+"/"))
		}, ""},
		{"nbdkit data", func(t *testing.T) (*testrig.Server, []testrig.Allocation) {
			s := testrig.Nbdkit(t, "data", "1 2 3 @0x100000 4 5 @0x800000 @^0x10000 \"hello\" @0x2000000")
			return s, testrig.Allocations(testrig.QemuImgMap(t, "nbd://"+s.Addr+"/"))
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, want := tc.start(t)
			status, out, errs := nbdroot(t, "probe", "--map", "--json", s.Addr+tc.path)
			if status != 0 {
				t.Fatalf("exit %d: %s", status, errs)
			}
			var extents []extentJSON
			if err := json.Unmarshal([]byte(out), &extents); err != nil {
				t.Fatalf("--json output: %v\n%s", err, out)
			}
			var got []testrig.Allocation
			var size uint64
			for _, e := range extents {
				if want := extentType(negotiate.ContextBaseAllocation, e.Flags); e.Type != want {
					t.Errorf("extent %+v: type %q, want %q", e, e.Type, want)
				}
				got = append(got, testrig.Allocation{Offset: e.Offset, Length: e.Length, Flags: e.Flags})
				size += e.Length
			}
			if merged := testrig.MergeAllocations(got); !slices.Equal(merged, got) {
				t.Errorf("probe --map left adjacent extents of one type unmerged: %v", got)
			}
			if !slices.Equal(got, want) {
				t.Errorf("probe --map\n got %v\nwant %v (qemu-img map)", got, want)
			}

			status, out, _ = nbdroot(t, "probe", "--totals", "--json", s.Addr+tc.path)
			var totals []totalJSON
			if err := json.Unmarshal([]byte(out), &totals); status != 0 || err != nil {
				t.Fatalf("--totals --json: exit %d, %v\n%s", status, err, out)
			}
			var sum uint64
			var pct float64
			for _, x := range totals {
				sum += x.Length
				pct += x.Percent
			}
			if sum != size || math.Abs(pct-100) > 1e-6 {
				t.Errorf("totals %+v add up to %d bytes, %.3f%%; want %d, 100%%", totals, sum, pct, size)
			}
		})
	}
}

// TestProbeMapText checks the text outputs against qemu-nbd, and the
// refusals: nbd-server (no structured replies), an unknown context.
func TestProbeMapText(t *testing.T) {
	dir := t.TempDir()
	qcow := testrig.SparseImage(t, filepath.Join(dir, "sparse.qcow2"), "qcow2", 64<<20, sparseWrites...)
	s := testrig.QemuNBD(t, qcow, "disk", testrig.Format("qcow2"), testrig.ReadOnly())
	status, out, _ := nbdroot(t, "probe", "--map", s.Addr+"/disk")
	want := "" +
		"         0     1048576    3  hole,zero\n" +
		"   1048576       65536    0  data\n" +
		"   1114112     9371648    3  hole,zero\n" +
		"  10485760     2097152    0  data\n" +
		"  12582912    37748736    3  hole,zero\n" +
		"  50331648       65536    0  data\n" +
		"  50397184    16711680    3  hole,zero\n"
	if status != 0 || out != want {
		t.Errorf("probe --map: exit %d\n%s\nwant\n%s", status, out, want)
	}
	// --context base:allocation alone implies --map.
	if status, out2, _ := nbdroot(t, "probe", "--context", "base:allocation", s.Addr+"/disk"); status != 0 || out2 != out {
		t.Errorf("probe --context: exit %d\n%s", status, out2)
	}
	status, out, _ = nbdroot(t, "probe", "--totals", s.Addr+"/disk")
	want = "" +
		"   2228224    3.3%    0  data\n" +
		"  64880640   96.7%    3  hole,zero\n"
	if status != 0 || out != want {
		t.Errorf("probe --totals: exit %d\n%s\nwant\n%s", status, out, want)
	}

	status, _, errs := nbdroot(t, "probe", "--map", "--context", "qemu:dirty-bitmap:nosuch", s.Addr+"/disk")
	if status != 1 || !strings.Contains(errs, `server does not offer metadata context "qemu:dirty-bitmap:nosuch" for this export`) ||
		!strings.Contains(errs, "'nbdroot list "+s.Addr+"' shows the contexts it offers") {
		t.Errorf("unknown context: exit %d, stderr %q", status, errs)
	}
	status, _, errs = nbdroot(t, "probe", "--map", "--context", "allocation", s.Addr+"/disk")
	if status != 1 || !strings.Contains(errs, `metadata context name "allocation" has no namespace`) {
		t.Errorf("bad context name: exit %d, stderr %q", status, errs)
	}

	ns := testrig.NbdServer(t, map[string]string{"disk": testrig.RawImage(t, filepath.Join(dir, "disk.img"), 1<<20)})
	status, out, errs = nbdroot(t, "probe", "--map", ns.Addr+"/disk")
	want = fmt.Sprintf("nbdroot: probe: server %s does not support structured replies (NBD_OPT_STRUCTURED_REPLY: NBD_REP_ERR_UNSUP", ns.Addr)
	if status != 1 || out != "" || !strings.HasPrefix(errs, want) || !strings.HasSuffix(errs, "; --map needs them\n") {
		t.Errorf("nbd-server: exit %d, stdout %q, stderr %q; want 1 and %q...", status, out, errs, want)
	}
	// Without --map, probe still works there.
	if status, _, _ := nbdroot(t, "probe", ns.Addr+"/disk"); status != 0 {
		t.Errorf("probe without --map against nbd-server: exit %d", status)
	}
}
