package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
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

// ParseCompression parses a compression name: gzip, zstd, xz or none.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case Gzip, Zstd, Xz, None:
		return c, nil
	}
	return "", fmt.Errorf("unknown compression %q (want gzip, zstd, xz or none)", s)
}

// compressorCommand is the program that compresses stdin to stdout for c,
// nil when c is compressed in this process (gzip, none). zstd and xz run
// as dracut and initramfs-tools run them: their Go encoders would add
// three quarters of a MiB to the binary that becomes /init, which the
// keeper runs and the exitrd holds in RAM for the machine's life, and the
// tools compress better (xz: 4.7 MB where Go's encoder made 5.9 from one
// 19 MiB archive). The output depends only on the input: one thread, one
// block.
//
//   - zstd -15, dracut's level: its 4 MiB window is what the kernel's
//     unpacker allocates while the machine boots;
//   - xz with the CRC32 check, the one the kernel's decoder knows besides
//     none (Documentation/staging/xz.rst), and xz's default 8 MiB
//     dictionary, which the unpacker allocates whole (XZ_DYNALLOC).
func compressorCommand(c Compression) []string {
	switch c {
	case Zstd:
		return []string{"zstd", "-q", "-15", "-T1", "-c"}
	case Xz:
		return []string{"xz", "-q", "-c", "-T1", "--check=crc32", "--lzma2=preset=6,dict=8MiB"}
	}
	return nil
}

// compressor returns a writer that compresses into w; closing it finishes
// the stream (and waits for the program) but does not close w. The gzip
// header has no name and no time.
func compressor(ctx context.Context, w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case Gzip:
		// Level 9 saves 0.5% on a typical image and takes four times as long.
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case None:
		return nopCloser{w}, nil
	case Zstd, Xz:
		return startCompressor(ctx, w, c)
	}
	_, err := ParseCompression(string(c))
	return nil, err
}

// commandWriter is a compressing program's stdin.
type commandWriter struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	stderr *bytes.Buffer
	waited bool
	err    error // the program's failure, once waited
}

// startCompressor starts c's program writing to w.
func startCompressor(ctx context.Context, w io.Writer, c Compression) (*commandWriter, error) {
	argv := compressorCommand(c)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	in, err := cmd.StdinPipe()
	if err == nil {
		err = cmd.Start()
	}
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("%s compression needs %s(1), which is not installed", c, argv[0])
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", argv[0], err)
	}
	return &commandWriter{cmd: cmd, in: in, stderr: &stderr}, nil
}

func (cw *commandWriter) Write(p []byte) (int, error) {
	n, err := cw.in.Write(p)
	if err != nil {
		// The program is gone (it failed, or ctx ended): its own
		// error says more than the broken pipe.
		if werr := cw.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// Close ends the program's input and waits for it to finish the stream.
func (cw *commandWriter) Close() error { return cw.wait() }

// wait closes stdin and waits for the program, once, and returns its
// failure with the first line it wrote to stderr.
func (cw *commandWriter) wait() error {
	if cw.waited {
		return cw.err
	}
	cw.waited = true
	cw.in.Close()
	if err := cw.cmd.Wait(); err != nil {
		if msg, _, _ := strings.Cut(strings.TrimSpace(cw.stderr.String()), "\n"); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		cw.err = fmt.Errorf("%s: %w", cw.cmd.Args[0], err)
	}
	return cw.err
}

// nopCloser adds a Close that does nothing.
type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
