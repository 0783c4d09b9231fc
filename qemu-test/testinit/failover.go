package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// failover reads /nbdroot-test/blob over and over, dropping the page cache
// before each pass so that every pass reads the device, for
// testinit.seconds (default 30): the test stops the first server meanwhile.
// It reports the passes, failed reads and passes whose checksum differs
// from the first, then nbdroot status (/usr/sbin/nbdroot).
func failover(args map[string]string) {
	first := ""
	passes, fails, mismatches := 0, 0, 0
	say("failover=ready")
	for deadline := time.Now().Add(time.Duration(intArg(args, "testinit.seconds", 30)) * time.Second); time.Now().Before(deadline); {
		_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
		sum, err := checksum("/nbdroot-test/blob")
		passes++
		switch {
		case err != nil:
			fails++
			say("read=FAIL %v", err)
		case first == "":
			first = sum
		case sum != first:
			mismatches++
		}
		time.Sleep(100 * time.Millisecond)
	}
	say("failover-reads=%d failed=%d mismatched=%d", passes, fails, mismatches)
	status, err := run("/usr/sbin/nbdroot", "status")
	for _, l := range strings.Split(status, "\n") {
		say("status: %s", l)
	}
	say("status-err=%s", errName(err))
}

func checksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}
