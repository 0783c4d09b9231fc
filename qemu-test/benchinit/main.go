// Command benchinit is the init of the root image BenchmarkKeeper boots: as
// PID 1 of the real root it reports the keeper's resident memory, reads the
// root device sequentially (cold cache) and reports the time, as
// "BENCH: key=value" console lines, then powers off.
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	mib := 256
	for _, w := range strings.Fields(readFile("/proc/cmdline")) {
		if v, ok := strings.CutPrefix(w, "bench.read_mib="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				mib = n
			}
		}
	}
	fmt.Printf("BENCH: keeper_rss_kib=%s\n", keeperRSS())
	for _, f := range []string{"queue/max_sectors_kb", "queue/read_ahead_kb", "queue/max_hw_sectors_kb"} {
		fmt.Printf("BENCH: %s=%s\n", filepath.Base(f), strings.TrimSpace(readFile("/sys/block/nbd0/"+f)))
	}
	secs, err := readSeq("/dev/nbd0", int64(mib)<<20)
	if err != nil {
		fmt.Printf("BENCH: read error=%v\n", err)
	} else {
		fmt.Printf("BENCH: read_mib=%d seconds=%.3f\n", mib, secs)
	}
	fmt.Printf("BENCH: keeper_rss_after_kib=%s\n", keeperRSS())
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// readSeq reads n bytes of dev from the start, 1 MiB at a time, through the
// page cache (as dd bs=1M would), and returns the seconds it took.
func readSeq(dev string, n int64) (float64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	_ = unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0) // cold cache
	buf := make([]byte, 1<<20)
	t0 := time.Now()
	got, err := io.CopyBuffer(io.Discard, io.LimitReader(f, n), buf)
	if err != nil {
		return 0, err
	}
	if got != n {
		return 0, fmt.Errorf("read %d bytes, want %d", got, n)
	}
	return time.Since(t0).Seconds(), nil
}

// keeperRSS returns VmRSS (KiB) of the process whose argv[0] is @nbdroot.
func keeperRSS() string {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.HasPrefix(b, []byte("@nbdroot\x00")) {
			continue
		}
		var rss, anon, file string
		for _, line := range strings.Split(readFile(filepath.Join("/proc", e.Name(), "status")), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSuffix(strings.TrimSpace(v), " kB")
			switch k {
			case "VmRSS":
				rss = v
			case "RssAnon":
				anon = v
			case "RssFile":
				file = v
			}
		}
		return rss + " anon_kib=" + anon + " file_kib=" + file
	}
	return "none"
}
