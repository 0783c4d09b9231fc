package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Offsets in the x86 boot sector and setup header
// (Documentation/arch/x86/boot.rst).
const (
	bootFlagOffset      = 0x1FE // 0xAA55
	headerMagicOffset   = 0x202 // "HdrS"
	protocolOffset      = 0x206 // boot protocol version
	kernelVersionOffset = 0x20E // pointer to the version string, minus 0x200
	maxVersionLen       = 256
)

// KernelVersion returns the release of the x86 kernel image at path (a
// bzImage such as /boot/vmlinuz-6.1.0-56-amd64), the name of its module
// directory: the first word of the setup header's kernel_version string.
// Images without a setup header (vmlinux, arm64 Image) are an error naming
// the file.
func KernelVersion(kernelImage string) (string, error) {
	f, err := os.Open(kernelImage)
	if err != nil {
		return "", fmt.Errorf("reading kernel version: %w", err)
	}
	defer f.Close()
	v, err := bzImageVersion(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", kernelImage, err)
	}
	return v, nil
}

// bzImageVersion reads the kernel release from a bzImage's setup header.
func bzImageVersion(r io.ReaderAt) (string, error) {
	var hdr [kernelVersionOffset + 2]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", errors.New("not an x86 bzImage (too short for a setup header)")
		}
		return "", fmt.Errorf("reading the setup header: %w", err)
	}
	if string(hdr[headerMagicOffset:headerMagicOffset+4]) != "HdrS" ||
		binary.LittleEndian.Uint16(hdr[bootFlagOffset:]) != 0xAA55 {
		return "", errors.New("not an x86 bzImage (no \"HdrS\" setup header)")
	}
	if proto := binary.LittleEndian.Uint16(hdr[protocolOffset:]); proto < 0x0200 {
		return "", fmt.Errorf("boot protocol %d.%02d predates the kernel_version field", proto>>8, proto&0xff)
	}
	ptr := binary.LittleEndian.Uint16(hdr[kernelVersionOffset:])
	if ptr == 0 {
		return "", errors.New("setup header has no kernel_version string")
	}
	buf := make([]byte, maxVersionLen)
	n, err := r.ReadAt(buf, int64(ptr)+0x200)
	if n == 0 && err != nil {
		return "", fmt.Errorf("reading kernel_version string at %#x: %w", int(ptr)+0x200, err)
	}
	end := bytes.IndexByte(buf[:n], 0)
	if end < 0 {
		return "", fmt.Errorf("kernel_version string at %#x is not NUL-terminated within %d bytes", int(ptr)+0x200, maxVersionLen)
	}
	s := string(buf[:end])
	fields := strings.Fields(s)
	if len(fields) == 0 || !printable(fields[0]) || strings.ContainsRune(fields[0], '/') {
		return "", fmt.Errorf("kernel_version string %q does not start with a release", s)
	}
	return fields[0], nil
}

// printable reports whether s is all printable ASCII.
func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f })
}
