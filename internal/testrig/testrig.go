// Package testrig starts real NBD servers (qemu-nbd, nbdkit, nbd-server) and
// builds the files they serve, for tests elsewhere in the tree.
//
// Every helper takes a testing.TB, fails the test on error and registers its
// own cleanup: servers are stopped (by pid) and temporary files removed when
// the test ends. Servers listen on 127.0.0.1 only, on a free port picked at
// start. A missing tool skips the test, unless the environment variable CI is
// set, in which case it fails it: CI must run everything.
package testrig

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Need skips the test (or fails it when $CI is set) unless every tool is
// found in PATH.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	what := strings.Join(missing, ", ")
	if os.Getenv("CI") != "" {
		t.Fatalf("testrig: %s missing from PATH, run make deps", what)
	}
	t.Skipf("testrig: %s not in PATH: this test needs a real NBD server or tool (run make deps to install it)", what)
}

// Tool returns the path of tool, after Need.
func Tool(t testing.TB, tool string) string {
	t.Helper()
	Need(t, tool)
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testrig: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Ext4Image writes an ext4 filesystem image of size bytes at dir/root.img,
// holding files (slash-separated path → content), and returns its path. A
// file whose content starts with "#!" or the ELF magic is made executable.
// No privileges are needed.
func Ext4Image(t testing.TB, dir string, size int64, files map[string][]byte) string {
	t.Helper()
	src, err := os.MkdirTemp(dir, "ext4-src-")
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	defer os.RemoveAll(src)
	WriteTree(t, src, files)
	return Ext4FromDir(t, dir+"/root.img", size, src)
}

// WriteTree writes files (slash-separated path → content) under dir, creating
// directories as needed. A file whose content starts with "#!" or the ELF
// magic is made executable.
func WriteTree(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		p := dir + "/" + strings.TrimPrefix(name, "/")
		if err := os.MkdirAll(p[:strings.LastIndex(p, "/")], 0o755); err != nil {
			t.Fatalf("testrig: %v", err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(string(data), "#!") || strings.HasPrefix(string(data), "\x7fELF") {
			mode = 0o755
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatalf("testrig: %v", err)
		}
	}
}

// Ext4FromDir writes an ext4 image of size bytes at img holding a copy of the
// tree at src (mkfs.ext4 -d), and returns img.
func Ext4FromDir(t testing.TB, img string, size int64, src string) string {
	t.Helper()
	Need(t, "mkfs.ext4")
	f, err := os.Create(img)
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("testrig: sizing %s: %v", img, err)
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img).CombinedOutput()
	if err != nil {
		t.Fatalf("testrig: mkfs.ext4 -d %s %s: %v\n%s", src, img, err, out)
	}
	return img
}

// RawImage writes a file of size bytes at path and returns path. Each 8-byte
// word holds its own index as 8 lower-case hex digits, so data read from the
// wrong offset shows.
func RawImage(t testing.TB, path string, size int64) string {
	t.Helper()
	buf := make([]byte, 64<<10)
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	defer f.Close()
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += 8 {
			v := uint32((off + int64(i)) / 8)
			for j := 7; j >= 0; j-- {
				buf[i+j] = "0123456789abcdef"[v&15]
				v >>= 4
			}
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatalf("testrig: writing %s: %v", path, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("testrig: writing %s: %v", path, err)
	}
	return path
}

// PartitionOffset is where PartitionedExt4 puts its one partition.
const PartitionOffset = 1 << 20

// PartitionedExt4 writes a disk image at img: an MBR partition table with
// one Linux partition from PartitionOffset to the end, holding an ext4
// filesystem with a copy of the tree at src. It returns img.
func PartitionedExt4(t testing.TB, img string, size int64, src string) string {
	t.Helper()
	Need(t, "mkfs.ext4")
	f, err := os.Create(img)
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	mbr := make([]byte, 512)
	entry := mbr[446:462]
	entry[4] = 0x83 // Linux
	binary.LittleEndian.PutUint32(entry[8:], PartitionOffset/512)
	binary.LittleEndian.PutUint32(entry[12:], uint32((size-PartitionOffset)/512))
	mbr[510], mbr[511] = 0x55, 0xaa
	_, err = f.Write(mbr)
	if err == nil {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("testrig: writing %s: %v", img, err)
	}
	fsSize := strconv.FormatInt((size-PartitionOffset)>>10, 10) + "k"
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "offset="+strconv.Itoa(PartitionOffset), "-d", src, img, fsSize).CombinedOutput()
	if err != nil {
		t.Fatalf("testrig: mkfs.ext4 -E offset=%d -d %s %s: %v\n%s", PartitionOffset, src, img, err, out)
	}
	return img
}

// Write is one write SparseImage makes: Length bytes at Offset, each the
// byte Pattern, or, with Zero, zeroes written as such (qemu-io write -z),
// which a format may record as a hole or a zero cluster.
type Write struct {
	Offset, Length int64
	Pattern        byte
	Zero           bool
}

// SparseImage creates an image of size bytes at path in format ("raw",
// "qcow2"; qemu-img create), makes the writes with qemu-io, and returns
// path. What is not written stays unallocated.
func SparseImage(t testing.TB, path, format string, size int64, writes ...Write) string {
	t.Helper()
	Need(t, "qemu-img", "qemu-io")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", format, path, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
		t.Fatalf("testrig: qemu-img create -f %s %s: %v\n%s", format, path, err, out)
	}
	if len(writes) == 0 {
		return path
	}
	args := []string{"-f", format}
	for _, w := range writes {
		cmd := fmt.Sprintf("write -P %d %d %d", w.Pattern, w.Offset, w.Length)
		if w.Zero {
			cmd = fmt.Sprintf("write -z %d %d", w.Offset, w.Length)
		}
		args = append(args, "-c", cmd)
	}
	if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("testrig: qemu-io %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return path
}

// MapEntry is one range of `qemu-img map --output=json`: Data (allocated
// data) and Zero (reads as zeroes).
type MapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
}

// QemuImgMap runs `qemu-img map --output=json` with args (such as "-f",
// "qcow2", PATH, or an nbd:// URI) and returns its ranges.
func QemuImgMap(t testing.TB, args ...string) []MapEntry {
	t.Helper()
	Need(t, "qemu-img")
	out, err := exec.Command("qemu-img", append([]string{"map", "--output=json"}, args...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("testrig: qemu-img map %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	var m []MapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("testrig: qemu-img map %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return m
}

// Allocation is a run of an image in the terms of NBD's base:allocation
// metadata context: Flags holds NBD_STATE_HOLE (1) and NBD_STATE_ZERO (2).
type Allocation struct {
	Offset, Length uint64
	Flags          uint32
}

// Allocations turns qemu-img map's ranges into base:allocation runs as
// QEMU's NBD server and client translate them (no data: a hole; zero:
// NBD_STATE_ZERO), adjacent runs with the same flags merged.
func Allocations(m []MapEntry) []Allocation {
	runs := make([]Allocation, 0, len(m))
	for _, e := range m {
		var flags uint32
		if !e.Data {
			flags |= 1
		}
		if e.Zero {
			flags |= 2
		}
		runs = append(runs, Allocation{Offset: uint64(e.Start), Length: uint64(e.Length), Flags: flags})
	}
	return MergeAllocations(runs)
}

// MergeAllocations merges adjacent runs with the same flags.
func MergeAllocations(runs []Allocation) []Allocation {
	var out []Allocation
	for _, r := range runs {
		if n := len(out); n > 0 && out[n-1].Flags == r.Flags && out[n-1].Offset+out[n-1].Length == r.Offset {
			out[n-1].Length += r.Length
			continue
		}
		out = append(out, r)
	}
	return out
}
