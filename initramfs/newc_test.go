package initramfs

import (
	"bytes"
	"path"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
	"golang.org/x/sys/unix"
)

// TestNewcMatchesURoot writes the same records with newcWriter and with
// u-root's newc writer (which the kernel's unpacker and u-root's tools
// read) and compares the bytes: names and contents of every length modulo
// 4, every kind of entry the image holds, and the trailer.
func TestNewcMatchesURoot(t *testing.T) {
	type rec struct {
		name           string
		mode           uint64
		nlink          uint64
		rmajor, rminor uint64
		data           string
		hasData        bool
	}
	recs := []rec{
		{name: "bin", mode: unix.S_IFDIR | 0o755, nlink: 2},
		{name: "init", mode: unix.S_IFREG | 0o755, nlink: 1, data: "#!/bin/sh\n", hasData: true},
		{name: "e", mode: unix.S_IFREG | 0o644, nlink: 1, data: "", hasData: true},
		{name: "ab", mode: unix.S_IFREG | 0o644, nlink: 1, data: "x", hasData: true},
		{name: "abc", mode: unix.S_IFREG | 0o600, nlink: 1, data: "xy", hasData: true},
		{name: "abcd", mode: unix.S_IFREG | 0o644, nlink: 1, data: "xyz", hasData: true},
		{name: "abcde", mode: unix.S_IFREG | unix.S_ISUID | 0o755, nlink: 1, data: "wxyz", hasData: true},
		{name: "bin/sh", mode: unix.S_IFLNK | 0o777, nlink: 1, data: "busybox", hasData: true},
		{name: "dev/console", mode: unix.S_IFCHR | 0o600, nlink: 1, rmajor: 5, rminor: 1},
		{name: "lib/modules/" + strings.Repeat("m", 200) + ".ko", mode: unix.S_IFREG | 0o644, nlink: 1, data: strings.Repeat("\x00\x01", 4097), hasData: true},
	}
	var ours, theirs bytes.Buffer
	nw := &newcWriter{w: &ours}
	uw := cpio.Newc.Writer(&theirs)
	for i, r := range recs {
		ino := uint64(i + 1)
		nr := newcRecord{name: r.name, ino: ino, mode: r.mode, nlink: r.nlink, rmajor: r.rmajor, rminor: r.rminor, size: uint64(len(r.data))}
		if err := nw.header(nr); err != nil {
			t.Fatal(err)
		}
		if r.hasData {
			if err := nw.data(strings.NewReader(r.data), nr.size); err != nil {
				t.Fatal(err)
			}
		}
		info := cpio.Info{Ino: ino, Mode: r.mode, NLink: r.nlink, Rmajor: r.rmajor, Rminor: r.rminor, Name: r.name}
		ur := cpio.Record{Info: info}
		if r.hasData {
			ur = cpio.StaticRecord([]byte(r.data), info)
		}
		if err := uw.WriteRecord(ur); err != nil {
			t.Fatal(err)
		}
	}
	if err := nw.header(newcRecord{name: newcTrailer}); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(uw); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours.Bytes(), theirs.Bytes()) {
		i := 0
		for i < min(ours.Len(), theirs.Len()) && ours.Bytes()[i] == theirs.Bytes()[i] {
			i++
		}
		t.Fatalf("archives differ at byte %d (lengths %d and %d)", i, ours.Len(), theirs.Len())
	}
}

// FuzzNewc writes one record and the trailer with newcWriter and with
// u-root's writer and wants the same bytes, for any name, mode, device
// numbers and contents.
func FuzzNewc(f *testing.F) {
	f.Add("init", uint32(unix.S_IFREG|0o755), uint32(0), uint32(0), []byte("#!/bin/sh\n"))
	f.Add("dev/console", uint32(unix.S_IFCHR|0o600), uint32(5), uint32(1), []byte(nil))
	f.Add("a", uint32(unix.S_IFDIR|0o755), uint32(0), uint32(0), []byte(nil))
	f.Fuzz(func(t *testing.T, name string, mode, rmajor, rminor uint32, data []byte) {
		if name != path.Clean(name) || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
			// The image's names are clean and relative (u-root's
			// writer would clean them), and a NUL is refused.
			t.Skip()
		}
		var ours, theirs bytes.Buffer
		nw := &newcWriter{w: &ours}
		r := newcRecord{name: name, ino: 1, mode: uint64(mode), nlink: 1, rmajor: uint64(rmajor), rminor: uint64(rminor), size: uint64(len(data))}
		if err := nw.header(r); err != nil {
			t.Fatal(err)
		}
		if err := nw.data(bytes.NewReader(data), r.size); err != nil {
			t.Fatal(err)
		}
		if err := nw.header(newcRecord{name: newcTrailer}); err != nil {
			t.Fatal(err)
		}
		uw := cpio.Newc.Writer(&theirs)
		info := cpio.Info{Ino: 1, Mode: r.mode, NLink: 1, Rmajor: r.rmajor, Rminor: r.rminor, Name: name}
		if err := uw.WriteRecord(cpio.StaticRecord(data, info)); err != nil {
			t.Fatal(err)
		}
		if err := cpio.WriteTrailer(uw); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours.Bytes(), theirs.Bytes()) {
			t.Fatalf("name %q mode %o rdev %d:%d, %d bytes: the archives differ", name, mode, rmajor, rminor, len(data))
		}
	})
}

// TestNewcLimits checks that a record newc cannot describe is refused,
// and that contents shorter than the header said are an error, not a
// corrupt archive.
func TestNewcLimits(t *testing.T) {
	nw := &newcWriter{w: &bytes.Buffer{}}
	if err := nw.header(newcRecord{name: "big", mode: unix.S_IFREG, size: 1 << 32}); err == nil || !strings.Contains(err.Error(), "4 GiB") {
		t.Errorf("a 4 GiB record: %v", err)
	}
	if err := nw.header(newcRecord{name: "a\x00b"}); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("a name with a NUL: %v", err)
	}
	if err := nw.data(strings.NewReader("ab"), 3); err == nil || !strings.Contains(err.Error(), "wrote 2 bytes of 3") {
		t.Errorf("short contents: %v", err)
	}
}
