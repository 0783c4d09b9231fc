package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hogEnv makes testinit, re-executed, the swap mode's memory hog: it
// touches that many MiB and exits.
const hogEnv = "TESTINIT_HOG_MIB"

// swapMode runs the swap mode (testinit.mode=swap): a swap file on the
// NBD root, a memory hog that pushes the machine into it, and then the
// root keeper's memory. Console lines:
//
//	TESTINIT: swap on=ok|ERRNO mib=N t=UPTIME
//	TESTINIT: swap hog swapped_kb=N t=UPTIME  (the hog: swap in use at its peak)
//	TESTINIT: swap hog exit=ok|ERR t=UPTIME
//	TESTINIT: swap keeper Swap=NkB Locked=NkB Rss=NkB  (its smaps_rollup)
//	TESTINIT: swap off=ok|ERRNO io=ok|FAIL(...)
//
// testinit.swap_mib sizes the swap file, testinit.hog_mib the hog.
func swapMode(args map[string]string) {
	swapMiB, _ := strconv.Atoi(args["testinit.swap_mib"])
	hogMiB, _ := strconv.Atoi(args["testinit.hog_mib"])
	const path = "/swapfile"
	err := makeSwapFile(path, swapMiB)
	if err == nil {
		err = swapon(path)
	}
	say("swap on=%s mib=%d t=%.3f", errName(err), swapMiB, uptime())
	if err != nil {
		return
	}
	hog := exec.Command("/proc/self/exe")
	hog.Env = append(os.Environ(), fmt.Sprintf("%s=%d", hogEnv, hogMiB))
	hog.Stdout, hog.Stderr = os.Stdout, os.Stderr
	say("swap hog exit=%s t=%.3f", errName(hog.Run()), uptime())
	pid, _, _ := strings.Cut(keeper(), ":")
	kb := rollupKB(pid)
	say("swap keeper Swap=%dkB Locked=%dkB Rss=%dkB", kb["Swap"], kb["Locked"], kb["Rss"])
	offErr := swapoff(path)
	ioErr := writeReadBack("/nbdroot-test/after-swap", args["testinit.token"])
	io := "ok"
	if ioErr != nil {
		io = fmt.Sprintf("FAIL(%v)", ioErr)
	}
	say("swap off=%s io=%s", errName(offErr), io)
}

// hogMain is the hog: it touches mib MiB twice over (the second pass
// brings back what the first pushed out), reports the swap in use at its
// peak, and exits.
func hogMain(mib string) {
	n, _ := strconv.Atoi(mib)
	mem := make([][]byte, n)
	for pass := 0; pass < 2; pass++ {
		for i := range mem {
			if mem[i] == nil {
				mem[i] = make([]byte, 1<<20)
			}
			for j := 0; j < len(mem[i]); j += 4096 {
				mem[i][j] = byte(pass + 1)
			}
		}
	}
	mi := meminfoKB()
	say("swap hog swapped_kb=%d t=%.3f", mi["SwapTotal"]-mi["SwapFree"], uptime())
	os.Exit(0)
}

// makeSwapFile writes a swap file of mib MiB at path, as mkswap does: all
// blocks allocated (the kernel refuses holes), a version 1 header in the
// first page, the "SWAPSPACE2" signature at its end.
func makeSwapFile(path string, mib int) error {
	const page = 4096
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for range mib {
		if _, err := f.Write(zero); err != nil {
			return err
		}
	}
	hdr := make([]byte, page)
	binary.LittleEndian.PutUint32(hdr[1024:], 1)                          // version
	binary.LittleEndian.PutUint32(hdr[1028:], uint32(mib<<20/page-1))     // last page
	copy(hdr[1036:], []byte{0x6e, 0x62, 0x64, 0x72, 0x6f, 0x6f, 0x74, 1}) // uuid (any)
	copy(hdr[page-10:], "SWAPSPACE2")
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return err
	}
	return f.Sync()
}

func swapon(path string) error  { return swapCall(unix.SYS_SWAPON, path) }
func swapoff(path string) error { return swapCall(unix.SYS_SWAPOFF, path) }

// swapCall is swapon(2) or swapoff(2), nr, on path (no flags).
func swapCall(nr uintptr, path string) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(nr, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// rollupKB is /proc/PID/smaps_rollup's sizes in kB.
func rollupKB(pid string) map[string]int { return kbFile("/proc/" + pid + "/smaps_rollup") }

// meminfoKB is /proc/meminfo's sizes in kB.
func meminfoKB() map[string]int { return kbFile("/proc/meminfo") }

// kbFile reads a /proc file of "Key: N kB" lines.
func kbFile(path string) map[string]int {
	kb := map[string]int{}
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			kb[k], _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return kb
}
