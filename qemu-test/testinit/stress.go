package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/qemu-test/stressblock"
)

// stressPath is where the blocks go; their layout is package stressblock's.
const stressPath = "/nbdroot-test/stress.dat"

// stallReport is the shortest write+fsync reported as a stall.
const stallReport = time.Second

// stress runs the stress mode (testinit.mode=stress): it writes checksummed blocks to
// stressPath, one write and one fsync per block, for
// testinit.stress_seconds (default 20) or until testinit.stress_blocks
// blocks (default 8192) have been tried, at most one block per
// testinit.stress_interval_ms (default: no pause), while the test restarts
// the server under it. Block i (package stressblock) lives at offset
// i*stressblock.Size. Console lines:
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
func stress(args map[string]string) {
	lockMemory()
	seconds := intArg(args, "testinit.stress_seconds", 20)
	maxBlocks := intArg(args, "testinit.stress_blocks", 8192)
	interval := time.Duration(intArg(args, "testinit.stress_interval_ms", 0)) * time.Millisecond
	id := stressblock.RunID(args["testinit.token"])
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
		b := stressblock.Make(id, uint64(n), uint64(n), uint64(uptime()*1e9))
		t0 := time.Now()
		op := "write"
		_, err := f.WriteAt(b, int64(n)*stressblock.Size)
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
func verifyStress(id stressblock.ID, failed []bool) string {
	f, err := openUncached(stressPath)
	if err != nil {
		return fmt.Sprintf("FAIL(%v)", err)
	}
	defer f.Close()
	b := make([]byte, stressblock.Size)
	bad, first := 0, ""
	for i := range failed {
		if failed[i] {
			continue
		}
		var why string
		if _, err := f.ReadAt(b, int64(i)*stressblock.Size); err != nil {
			why = "read: " + errName(err)
		} else {
			why = stressblock.Check(b, id, uint64(i))
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
