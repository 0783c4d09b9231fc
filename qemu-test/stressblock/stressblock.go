// Package stressblock is the layout of the checksummed blocks the QEMU
// tests' guests write and fsync while the test disturbs them, and that the
// guest and the host then verify. Block i of a run lives at offset i*Size.
//
// Layout (little-endian):
//
//	[0:8]      magic "NBDRSTRS"
//	[8:24]     run id: SHA-256(token)[:16]
//	[24:32]    index (the block's position in the file)
//	[32:40]    sequence number (the write attempt, counting failed ones)
//	[40:48]    CLOCK_BOOTTIME nanoseconds when the block was made
//	[48:4064]  payload: SHA-256 in counter mode over the run id and index
//	[4064:]    SHA-256 of [0:4064]
//
// qemu-test/testinit and distroguest write them; the tests check the image
// with Check.
package stressblock

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Size is the size of a block.
const Size = 4096

// magic starts every block.
const magic = "NBDRSTRS"

// sumAt is where the block's checksum starts.
const sumAt = Size - sha256.Size

// ID is a run's identity, written in each of its blocks.
type ID [16]byte

// RunID derives the run id from the test's token.
func RunID(token string) ID {
	sum := sha256.Sum256([]byte(token))
	var id ID
	copy(id[:], sum[:])
	return id
}

// Make builds block index of run id, written as attempt seq at boot time
// bootNanos.
func Make(id ID, index, seq, bootNanos uint64) []byte {
	b := make([]byte, Size)
	copy(b, magic)
	copy(b[8:24], id[:])
	binary.LittleEndian.PutUint64(b[24:], index)
	binary.LittleEndian.PutUint64(b[32:], seq)
	binary.LittleEndian.PutUint64(b[40:], bootNanos)
	var in [16 + 8 + 8]byte
	copy(in[:], id[:])
	binary.LittleEndian.PutUint64(in[16:], index)
	for off, ctr := 48, uint64(0); off < sumAt; ctr++ {
		binary.LittleEndian.PutUint64(in[24:], ctr)
		h := sha256.Sum256(in[:])
		off += copy(b[off:sumAt], h[:])
	}
	sum := sha256.Sum256(b[:sumAt])
	copy(b[sumAt:], sum[:])
	return b
}

// Check says what is wrong with b as block index of run id, or "" when
// nothing is.
func Check(b []byte, id ID, index uint64) string {
	switch {
	case len(b) != Size:
		return fmt.Sprintf("%d bytes", len(b))
	case string(b[:8]) != magic:
		return fmt.Sprintf("magic %q", b[:8])
	case !bytes.Equal(b[8:24], id[:]):
		return "another run's block"
	case binary.LittleEndian.Uint64(b[24:]) != index:
		return fmt.Sprintf("holds block %d", binary.LittleEndian.Uint64(b[24:]))
	}
	if sum := sha256.Sum256(b[:sumAt]); !bytes.Equal(sum[:], b[sumAt:]) {
		return "checksum mismatch"
	}
	return ""
}
