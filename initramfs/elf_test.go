package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// elf32Exec returns a 32-bit ELF executable, big-endian when be, with a
// PT_LOAD header and, when interp is not empty, a PT_INTERP naming it.
func elf32Exec(be bool, interp string) []byte {
	var bo binary.ByteOrder = binary.LittleEndian
	b := make([]byte, 256)
	copy(b, "\x7fELF\x01\x01\x01")
	if be {
		bo = binary.BigEndian
		b[5] = 2
	}
	bo.PutUint16(b[16:], 2) // ET_EXEC
	bo.PutUint32(b[28:], 52)
	bo.PutUint16(b[42:], 32)
	bo.PutUint16(b[44:], 2)
	bo.PutUint32(b[52:], 1) // PT_LOAD
	if interp != "" {
		ph := b[84:]
		bo.PutUint32(ph[0:], 3) // PT_INTERP
		bo.PutUint32(ph[4:], 160)
		bo.PutUint32(ph[16:], uint32(len(interp)+1))
		copy(b[160:], interp+"\x00")
	}
	return b
}

func TestELFInterpreter(t *testing.T) {
	const ld = "/lib64/ld-linux-x86-64.so.2"
	trunc := fakeELF(4096, ld)[:200]
	bigPh := fakeELF(4096, ld)
	binary.LittleEndian.PutUint64(bigPh[64+32:], 1<<20) // p_filesz
	badEntSize := fakeELF(4096, ld)
	binary.LittleEndian.PutUint16(badEntSize[54:], 8)
	rel := fakeELF(4096, "")
	binary.LittleEndian.PutUint16(rel[16:], 1) // ET_REL
	farPh := fakeELF(4096, "")
	binary.LittleEndian.PutUint64(farPh[32:], 1<<40)
	binary.LittleEndian.PutUint16(farPh[56:], 3)
	for _, tc := range []struct {
		name   string
		data   []byte
		interp string
		err    string // a substring of the error, "" for none
	}{
		{"static 64-bit", fakeELF(4096, ""), "", ""},
		{"dynamic 64-bit", fakeELF(4096, ld), ld, ""},
		{"static 32-bit", elf32Exec(false, ""), "", ""},
		{"dynamic 32-bit", elf32Exec(false, "/lib/ld-linux.so.2"), "/lib/ld-linux.so.2", ""},
		{"dynamic 32-bit big-endian", elf32Exec(true, "/lib/ld.so.1"), "/lib/ld.so.1", ""},
		{"a script", []byte("#!/bin/sh\necho hi\n"), "", "not an ELF executable"},
		{"empty", nil, "", "not an ELF executable"},
		{"header only", []byte("\x7fELF\x02\x01\x01"), "", "not an ELF executable"},
		{"bad class", append([]byte("\x7fELF\x03\x01\x01"), make([]byte, 64)...), "", "ELF class 3"},
		{"bad encoding", append([]byte("\x7fELF\x02\x03\x01"), make([]byte, 64)...), "", "ELF data encoding 3"},
		{"relocatable", rel, "", "ELF type 1 is not an executable"},
		{"interpreter past the end", trunc, "", "past the end"},
		{"huge interpreter", bigPh, "", "interpreter of 1048576 bytes"},
		{"program header too small", badEntSize, "", "program header size 8"},
		{"program headers past the end", farPh, "", "past the end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := elfInterpreter(bytes.NewReader(tc.data))
			switch {
			case tc.err == "" && (err != nil || got != tc.interp):
				t.Errorf("= %q, %v; want %q", got, err, tc.interp)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("= %q, %v; want an error with %q", got, err, tc.err)
			}
		})
	}
}

// TestELFInterpreterHost reads real executables: this test's own binary
// (static when built with CGO_ENABLED=0) and the host's shell, dynamic on
// every distribution, compared with what readelf would say.
func TestELFInterpreterHost(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{self, "/bin/sh"} {
		f, err := os.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		got, err := elfInterpreter(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		want := ""
		if out, err := exec.Command("readelf", "-lW", bin).Output(); err == nil {
			if _, rest, ok := strings.Cut(string(out), "[Requesting program interpreter: "); ok {
				want, _, _ = strings.Cut(rest, "]")
			}
		} else if errors.Is(err, exec.ErrNotFound) {
			t.Logf("readelf is not installed: only checking that %s reads", bin)
			continue
		}
		if got != want {
			t.Errorf("%s: interpreter %q, readelf says %q", bin, got, want)
		}
	}
}

// FuzzELFInterpreter feeds arbitrary files to the reader: an error or an
// answer, never a panic or an allocation beyond the file's bounds.
func FuzzELFInterpreter(f *testing.F) {
	f.Add(fakeELF(512, ""))
	f.Add(fakeELF(512, "/lib64/ld-linux-x86-64.so.2"))
	f.Add(elf32Exec(true, "/lib/ld.so.1"))
	f.Add([]byte("#!/bin/sh\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		interp, err := elfInterpreter(bytes.NewReader(data))
		if err == nil && len(interp) > elfMaxInterp {
			t.Fatalf("interpreter of %d bytes", len(interp))
		}
	})
}
