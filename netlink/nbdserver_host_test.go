package netlink

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// TestMemServer checks the test server itself, on any machine: the real
// client handshake, then requests as the kernel would send them.
func TestMemServer(t *testing.T) {
	s := newMemServer(t, 1<<20, flagSendFlush)
	k := s.connect(t)
	if k.export.Size != 1<<20 || k.export.Flags&flagSendFlush == 0 {
		t.Fatalf("negotiated %+v", k.export)
	}
	_ = k.f.SetDeadline(time.Now().Add(10 * time.Second))
	req := func(typ uint16, handle byte, off uint64, n uint32, payload []byte) {
		b := binary.BigEndian.AppendUint32(nil, reqMagic)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = append(b, 0, 0, 0, 0, 0, 0, 0, handle)
		b = binary.BigEndian.AppendUint64(b, off)
		b = binary.BigEndian.AppendUint32(b, n)
		if _, err := k.f.Write(append(b, payload...)); err != nil {
			t.Fatal(err)
		}
	}
	reply := func(handle byte, n int) (uint32, []byte) {
		b := make([]byte, 16+n)
		if _, err := io.ReadFull(k.f, b[:16]); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint32(b) != simpleReplyMagic || b[15] != handle {
			t.Fatalf("bad reply header %x", b[:16])
		}
		errno := binary.BigEndian.Uint32(b[4:])
		if errno == 0 && n > 0 {
			if _, err := io.ReadFull(k.f, b[16:]); err != nil {
				t.Fatal(err)
			}
		}
		return errno, b[16:]
	}

	req(nbdRead, 1, 4096, 512, nil)
	if errno, got := reply(1, 512); errno != 0 || !bytes.Equal(got, s.snapshot(4096, 512)) {
		t.Fatalf("read: errno %d, data differs", errno)
	}
	req(nbdWrite, 2, 512, 4, []byte("abcd"))
	if errno, _ := reply(2, 0); errno != 0 || string(s.snapshot(512, 4)) != "abcd" {
		t.Fatalf("write: errno %d, store %q", errno, s.snapshot(512, 4))
	}
	req(nbdRead, 3, 1<<20-2, 4, nil)
	if errno, _ := reply(3, 0); errno != nbdEINVAL {
		t.Fatalf("read beyond the end: errno %d, want EINVAL", errno)
	}
	req(nbdFlush, 4, 0, 0, nil)
	if errno, _ := reply(4, 0); errno != 0 || s.count(k.id, nbdFlush) != 1 {
		t.Fatalf("flush: errno %d, %d flushes seen", errno, s.count(k.id, nbdFlush))
	}
	req(nbdDisc, 5, 0, 0, nil)
	if n, err := k.f.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after NBD_CMD_DISC: read %d, %v; want EOF", n, err)
	}
}
