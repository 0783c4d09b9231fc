package initramfs

import (
	"compress/gzip"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression is how an archive is compressed. Debian's kernels unpack
// all of them (CONFIG_RD_GZIP, RD_ZSTD, RD_XZ); gzip is the one every
// kernel config has.
type Compression string

// Compressions.
const (
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
	Xz   Compression = "xz"
	None Compression = "none"
)

// zstdWindow bounds the zstd window. The kernel's unpacker allocates a
// window-sized buffer while the machine is booting; 8 MiB is what the zstd
// tool uses at its default levels.
const zstdWindow = 8 << 20

// xzDict is the xz dictionary: the kernel's initramfs unpacker allocates it
// whole (XZ_DYNALLOC), and 8 MiB is xz's own default (-6).
const xzDict = 8 << 20

// ParseCompression parses a compression name: gzip, zstd, xz or none.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case Gzip, Zstd, Xz, None:
		return c, nil
	}
	return "", fmt.Errorf("unknown compression %q (want gzip, zstd, xz or none)", s)
}

// compressor returns a writer that compresses into w; closing it finishes
// the stream but does not close w. The output depends only on the input:
// the gzip header has no name and no time, zstd runs on one goroutine, and
// xz writes one block.
func compressor(w io.Writer, c Compression) (io.WriteCloser, error) {
	var zw io.WriteCloser
	var err error
	switch c {
	case Gzip:
		// Level 9 saves 0.5% on a typical image and takes four times as long.
		zw, err = gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case Zstd:
		zw, err = zstd.NewWriter(w,
			zstd.WithEncoderLevel(zstd.SpeedBestCompression),
			zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(zstdWindow),
			zstd.WithEncoderCRC(true))
	case Xz:
		// The kernel's xz decoder knows the CRC32 check and no other
		// (Documentation/staging/xz.rst: xz --check=crc32).
		zw, err = xz.WriterConfig{CheckSum: xz.CRC32, DictCap: xzDict}.NewWriter(w)
	case None:
		return nopCloser{w}, nil
	default:
		_, err := ParseCompression(string(c))
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	return zw, nil
}

// nopCloser adds a Close that does nothing.
type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
