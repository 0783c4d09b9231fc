package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// The stress mode (testinit.mode=stress) writes checksummed blocks to
// stressPath, one write and one fsync per block, for
// testinit.stress_seconds (default 20) or until testinit.stress_blocks
// blocks (default 8192) have been tried, at most one block per
// testinit.stress_interval_ms (default: no pause), while the test restarts
// the server under it. Block i lives at offset i*stressBlockSize. Console lines:
//
//	TESTINIT: stress started t=UPTIME seconds=S max_blocks=M
//	TESTINIT: stress error index=I op=write|fsync err=ERRNO t=UPTIME
//	TESTINIT: stress resumed index=I after_errors=K t=UPTIME
//	TESTINIT: stress stall index=I seconds=D t=UPTIME
//	TESTINIT: stress progress blocks=N errors=E t=UPTIME
//	TESTINIT: stress max_stall=D
//	TESTINIT: stress blocks=N errors=E verify=ok|FAIL(...)
//
// An error line names a block whose write or fsync failed; every other
// block below N was written and fsynced, and must read back intact, in the
// guest (from the device, not the page cache) and in the image on the host. A
// stall line is a block whose write+fsync took stallReport or longer but
// succeeded: its t= is when I/O resumed.
const (
	stressPath      = "/nbdroot-test/stress.dat"
	stressBlockSize = 4096
	stallReport     = time.Second
	stressMagic     = "NBDRSTRS"
)

// Block layout (little-endian):
//
//	[0:8]      magic "NBDRSTRS"
//	[8:24]     run id: SHA-256(testinit.token)[:16]
//	[24:32]    index (the block's position in the file)
//	[32:40]    sequence number (the write attempt, counting failed ones)
//	[40:48]    CLOCK_BOOTTIME nanoseconds when the block was made
//	[48:4064]  payload: SHA-256 in counter mode over the run id and index
//	[4064:]    SHA-256 of [0:4064]
//
// qemu-test/restart_test.go checks the same layout on the host.
const stressSumAt = stressBlockSize - sha256.Size

// runID derives the run id from the test's token.
func runID(token string) [16]byte {
	sum := sha256.Sum256([]byte(token))
	var id [16]byte
	copy(id[:], sum[:])
	return id
}

// makeBlock builds block index of run id, written as attempt seq.
func makeBlock(id [16]byte, index, seq uint64) []byte {
	b := make([]byte, stressBlockSize)
	copy(b, stressMagic)
	copy(b[8:24], id[:])
	binary.LittleEndian.PutUint64(b[24:], index)
	binary.LittleEndian.PutUint64(b[32:], seq)
	binary.LittleEndian.PutUint64(b[40:], uint64(uptime()*1e9))
	var in [16 + 8 + 8]byte
	copy(in[:], id[:])
	binary.LittleEndian.PutUint64(in[16:], index)
	for off, ctr := 48, uint64(0); off < stressSumAt; ctr++ {
		binary.LittleEndian.PutUint64(in[24:], ctr)
		h := sha256.Sum256(in[:])
		off += copy(b[off:stressSumAt], h[:])
	}
	sum := sha256.Sum256(b[:stressSumAt])
	copy(b[stressSumAt:], sum[:])
	return b
}

// checkBlock says what is wrong with b as block index of run id, or "".
func checkBlock(b []byte, id [16]byte, index uint64) string {
	switch {
	case len(b) != stressBlockSize:
		return fmt.Sprintf("%d bytes", len(b))
	case string(b[:8]) != stressMagic:
		return fmt.Sprintf("magic %q", b[:8])
	case !bytes.Equal(b[8:24], id[:]):
		return "another run's block"
	case binary.LittleEndian.Uint64(b[24:]) != index:
		return fmt.Sprintf("holds block %d", binary.LittleEndian.Uint64(b[24:]))
	}
	sum := sha256.Sum256(b[:stressSumAt])
	if !bytes.Equal(sum[:], b[stressSumAt:]) {
		return "checksum mismatch"
	}
	return ""
}

// stress runs the stress mode (see stressPath).
func stress(args map[string]string) {
	lockMemory()
	seconds := intArg(args, "testinit.stress_seconds", 20)
	maxBlocks := intArg(args, "testinit.stress_blocks", 8192)
	interval := time.Duration(intArg(args, "testinit.stress_interval_ms", 0)) * time.Millisecond
	id := runID(args["testinit.token"])
	if err := os.MkdirAll(filepath.Dir(stressPath), 0o755); err != nil {
		say("stress blocks=0 errors=0 verify=FAIL(mkdir: %v)", err)
		return
	}
	f, err := os.OpenFile(stressPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		say("stress blocks=0 errors=0 verify=FAIL(create: %v)", err)
		return
	}
	defer f.Close()

	say("stress started t=%.3f seconds=%d max_blocks=%d", uptime(), seconds, maxBlocks)
	failed := make([]bool, maxBlocks)
	errs, streak := 0, 0
	var maxStall time.Duration
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	lastProgress := time.Now()
	n := 0
	for ; n < maxBlocks && time.Now().Before(deadline); n++ {
		b := makeBlock(id, uint64(n), uint64(n))
		t0 := time.Now()
		op := "write"
		_, err := f.WriteAt(b, int64(n)*stressBlockSize)
		if err == nil {
			op = "fsync"
			err = f.Sync()
		}
		took := time.Since(t0)
		if err != nil {
			failed[n] = true
			errs++
			streak++
			say("stress error index=%d op=%s err=%s t=%.3f", n, op, errName(err), uptime())
			// Do not race through the file while the device is away.
			time.Sleep(100 * time.Millisecond)
		} else {
			if streak > 0 {
				say("stress resumed index=%d after_errors=%d t=%.3f", n, streak, uptime())
				streak = 0
			}
			if took >= stallReport {
				say("stress stall index=%d seconds=%.3f t=%.3f", n, took.Seconds(), uptime())
			}
			maxStall = max(maxStall, took)
		}
		if time.Since(lastProgress) >= 2*time.Second {
			say("stress progress blocks=%d errors=%d t=%.3f", n+1, errs, uptime())
			lastProgress = time.Now()
		}
		time.Sleep(interval - time.Since(t0))
	}
	say("stress max_stall=%.3f", maxStall.Seconds())
	say("stress blocks=%d errors=%d verify=%s", n, errs, verifyStress(id, failed[:n]))
}

// verifyStress re-reads every block written without error from the device
// (not from the page cache) and checks it.
func verifyStress(id [16]byte, failed []bool) string {
	f, err := openUncached(stressPath)
	if err != nil {
		return fmt.Sprintf("FAIL(%v)", err)
	}
	defer f.Close()
	b := make([]byte, stressBlockSize)
	bad, first := 0, ""
	for i := range failed {
		if failed[i] {
			continue
		}
		var why string
		if _, err := f.ReadAt(b, int64(i)*stressBlockSize); err != nil {
			why = "read: " + errName(err)
		} else {
			why = checkBlock(b, id, uint64(i))
		}
		if why != "" {
			bad++
			if first == "" {
				first = fmt.Sprintf("block %d: %s", i, why)
			}
		}
	}
	if bad > 0 {
		return fmt.Sprintf("FAIL(%d bad; %s)", bad, first)
	}
	return "ok"
}

// openUncached opens path for reading after dropping its pages from the
// page cache, so that reads come from the device. (Dropping the whole page
// cache instead would also drop this init's own text, which a lost device
// could not give back; O_DIRECT reads fail once ext4 has recorded a
// writeback error on the file.)
func openUncached(path string) (*os.File, error) {
	unix.Sync()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		f.Close()
		return nil, fmt.Errorf("fadvise DONTNEED: %w", err)
	}
	return f, nil
}

// lockMemory keeps this process's pages in memory: a scenario that may
// lose the root device must still be able to report and power off, and
// code paged back in from a dead device kills PID 1.
func lockMemory() {
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
		say("mlockall=%s", errName(err))
	}
}
