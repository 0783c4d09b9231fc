package initramfs

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// newcTrailer is the name of the record that ends a newc archive.
const newcTrailer = "TRAILER!!!"

// newcWriter writes the "new ASCII" cpio format the kernel unpacks
// (Documentation/driver-api/early-userspace/buffer-format.rst): per record
// "070701" and thirteen fields of eight hex digits, the NUL-terminated
// name, padding to a multiple of 4 bytes, the data, padding again. Owner,
// group, mtime and the file system's device are written as 0, which
// keeps an image's bytes a function of its contents.
type newcWriter struct {
	w   io.Writer
	pos int64 // bytes written, for the padding
}

// newcRecord is one record's header.
type newcRecord struct {
	name           string // clean and relative ("etc/nbdroot.toml"); no NUL
	ino, mode      uint64
	nlink, size    uint64
	rmajor, rminor uint64
}

// header writes r's header and name, padded.
func (w *newcWriter) header(r newcRecord) error {
	if strings.IndexByte(r.name, 0) >= 0 {
		return fmt.Errorf("name %q has a NUL, which ends a newc name", r.name)
	}
	if r.size > math.MaxUint32 {
		return fmt.Errorf("%d bytes is more than a newc record holds (4 GiB)", r.size)
	}
	fields := []uint64{r.ino, r.mode, 0, 0, r.nlink, 0, r.size, 0, 0, r.rmajor, r.rminor, uint64(len(r.name)) + 1, 0}
	b := make([]byte, 0, 110+len(r.name)+4)
	b = append(b, "070701"...)
	for _, f := range fields {
		b = fmt.Appendf(b, "%08X", uint32(f))
	}
	b = append(append(b, r.name...), 0)
	return w.write(b)
}

// data writes the size bytes of a record's contents from src, padded.
func (w *newcWriter) data(src io.Reader, size uint64) error {
	n, err := io.Copy(w, io.LimitReader(src, int64(size)))
	if err != nil {
		return err
	}
	if uint64(n) != size {
		return fmt.Errorf("wrote %d bytes of %d; the archive is corrupt", n, size)
	}
	return w.write(nil)
}

// Write writes b unpadded (for io.Copy).
func (w *newcWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.pos += int64(n)
	return n, err
}

// write writes b and pads to a multiple of 4 bytes.
func (w *newcWriter) write(b []byte) error {
	var zeros [3]byte
	pad := (4 - (w.pos+int64(len(b)))%4) % 4
	if _, err := w.Write(append(b, zeros[:pad]...)); err != nil {
		return err
	}
	return nil
}
