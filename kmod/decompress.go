package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// A module file depmod lists may be compressed; its suffix says how. Gzip
// is read here (compress/gzip is in the binary for gzip images anyway);
// xz and zstd are read by xz(1) and zstd(1), as dracut and initramfs-tools
// read them. A Go decoder of each would add half a MiB to a binary that
// the keeper runs and the exitrd holds in RAM for as long as the machine
// runs, to serve two rare cases: a running system whose kernel cannot
// decompress a module itself (before Linux 6.4, or without
// CONFIG_MODULE_DECOMPRESS), where the distribution that compresses its
// modules installs the tool too, and mkinitramfs, which stores every
// module uncompressed (see Uncompressed).
const (
	suffixGzip = ".gz"
	suffixXz   = ".xz"
	suffixZstd = ".zst"
)

// decompressor is the program and arguments that write the contents of a
// file with the compression suffix to stdout; gzip's is nil (read here).
func decompressor(suffix string) []string {
	switch suffix {
	case suffixXz:
		return []string{"xz", "-dc", "--"}
	case suffixZstd:
		return []string{"zstd", "-dcq", "--"}
	}
	return nil
}

// Uncompressed returns the module file name file would have uncompressed
// (kernel/fs/ext4/ext4.ko for kernel/fs/ext4/ext4.ko.xz) and whether it is
// compressed. A name that is not a module file is returned unchanged.
func Uncompressed(file string) (name string, compressed bool) {
	for _, s := range []string{suffixGzip, suffixXz, suffixZstd} {
		if strings.HasSuffix(file, ".ko"+s) {
			return strings.TrimSuffix(file, s), true
		}
	}
	return file, false
}

// ReadModule returns the ELF image of the module file: its contents, or,
// for a compressed file (.ko.gz, .ko.xz, .ko.zst), its contents
// decompressed. Errors name the file, and, when the decompressor is not
// installed, the program to install.
func ReadModule(ctx context.Context, file string) ([]byte, error) {
	if _, compressed := Uncompressed(file); !compressed {
		return os.ReadFile(file)
	}
	suffix := file[strings.LastIndexByte(file, '.'):]
	argv := decompressor(suffix)
	if argv == nil {
		return gunzip(file)
	}
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], file)...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s: decompressing it needs %s(1), which is not installed", file, argv[0])
		}
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, firstLine(msg))
		}
		return nil, fmt.Errorf("%s: %s -d: %w", file, argv[0], err)
	}
	return out.Bytes(), nil
}

// gunzip returns the decompressed contents of a gzip file.
func gunzip(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return b, nil
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
