package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The few ELF facts checkStatic needs (include/uapi/linux/elf.h). They are
// read here rather than with debug/elf, which would bring DWARF and a
// zstd decoder for compressed sections into the binary that becomes /init,
// which the keeper and the exitrd hold in RAM, to read a header and a
// table.
const (
	elfIdentSize = 16
	elfClass32   = 1
	elfClass64   = 2
	elfData2LSB  = 1
	elfData2MSB  = 2
	elfTypeExec  = 2 // ET_EXEC
	elfTypeDyn   = 3 // ET_DYN: a position-independent executable too
	elfPTInterp  = 3 // PT_INTERP
	// elfMaxInterp bounds the interpreter path read (PATH_MAX).
	elfMaxInterp = 4096
)

// elfLayout is where the fields read live in one ELF class.
type elfLayout struct {
	headerSize                   int // ELF header bytes read
	phoff, phentsize, phnum      int // offsets in the ELF header
	phSize                       int // minimum program header size
	pOffset, pFilesz, pFieldSize int // offsets in a program header, and their width
}

// elfLayoutOf returns the layout of ELF class class, false for none.
func elfLayoutOf(class byte) (elfLayout, bool) {
	switch class {
	case elfClass32:
		return elfLayout{headerSize: 52, phoff: 28, phentsize: 42, phnum: 44, phSize: 32, pOffset: 4, pFilesz: 16, pFieldSize: 4}, true
	case elfClass64:
		return elfLayout{headerSize: 64, phoff: 32, phentsize: 54, phnum: 56, phSize: 56, pOffset: 8, pFilesz: 32, pFieldSize: 8}, true
	}
	return elfLayout{}, false
}

// errNotELF says a file is not an ELF executable this package can read.
var errNotELF = errors.New("not an ELF executable")

// elfInterpreter reads the ELF executable r and returns its program
// interpreter (PT_INTERP), "" for a statically linked one. Every offset
// and length is checked against what r holds.
func elfInterpreter(r io.ReaderAt) (string, error) {
	ident := make([]byte, elfIdentSize)
	if _, err := r.ReadAt(ident, 0); err != nil || !bytes.HasPrefix(ident, []byte("\x7fELF")) {
		return "", errNotELF
	}
	l, ok := elfLayoutOf(ident[4])
	if !ok {
		return "", fmt.Errorf("%w: ELF class %d", errNotELF, ident[4])
	}
	var bo binary.ByteOrder
	switch ident[5] {
	case elfData2LSB:
		bo = binary.LittleEndian
	case elfData2MSB:
		bo = binary.BigEndian
	default:
		return "", fmt.Errorf("%w: ELF data encoding %d", errNotELF, ident[5])
	}
	h := make([]byte, l.headerSize)
	if _, err := r.ReadAt(h, 0); err != nil {
		return "", fmt.Errorf("%w: short ELF header", errNotELF)
	}
	if t := bo.Uint16(h[16:]); t != elfTypeExec && t != elfTypeDyn {
		return "", fmt.Errorf("ELF type %d is not an executable", t)
	}
	field := func(b []byte, off, size int) uint64 {
		if size == 4 {
			return uint64(bo.Uint32(b[off:]))
		}
		return bo.Uint64(b[off:])
	}
	phoff := field(h, l.phoff, l.pFieldSize)
	phentsize, phnum := int(bo.Uint16(h[l.phentsize:])), int(bo.Uint16(h[l.phnum:]))
	if phnum == 0 {
		return "", nil
	}
	if phentsize < l.phSize {
		return "", fmt.Errorf("%w: program header size %d", errNotELF, phentsize)
	}
	ph := make([]byte, phentsize)
	for i := range phnum {
		off := phoff + uint64(i*phentsize)
		if off > 1<<62 {
			return "", fmt.Errorf("%w: program header offset %d", errNotELF, phoff)
		}
		if _, err := r.ReadAt(ph, int64(off)); err != nil {
			return "", fmt.Errorf("%w: program header %d is past the end", errNotELF, i)
		}
		if bo.Uint32(ph) != elfPTInterp {
			continue
		}
		pOff, size := field(ph, l.pOffset, l.pFieldSize), field(ph, l.pFilesz, l.pFieldSize)
		if size == 0 || size > elfMaxInterp || pOff > 1<<62 {
			return "", fmt.Errorf("%w: interpreter of %d bytes at %d", errNotELF, size, pOff)
		}
		interp := make([]byte, size)
		if _, err := r.ReadAt(interp, int64(pOff)); err != nil {
			return "", fmt.Errorf("%w: the interpreter's path is past the end", errNotELF)
		}
		return string(bytes.TrimRight(interp, "\x00")), nil
	}
	return "", nil
}
