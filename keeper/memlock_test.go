package keeper

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMaps(t *testing.T) {
	const maps = `00400000-00767000 r-xp 00000000 fe:00 9977893                            /tmp/nbdroot
00767000-00aea000 r--p 00367000 fe:00 9977893                            /tmp/nbdroot
00aea000-00b1d000 rw-p 006ea000 fe:00 9977893                            /tmp/nbdroot
00b1d000-02b5f000 rw-p 00000000 00:00 0 
7f32c19a0000-7f32c1b00000 rw-p 00000000 00:00 0 
7f32c1c00000-7f32c1c01000 r--p 00000000 fe:01 9977893                    /other/device/same/inode
7f32c1d00000-7f32c1d01000 r--p 00000000 fe:00 9977894                    /same/device/other/inode
7ffc87701000-7ffc87722000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`
	got, err := parseMaps([]byte(maps), 0xfe, 0, 9977893)
	if err != nil {
		t.Fatal(err)
	}
	want := []mapping{{0x400000, 0x767000}, {0x767000, 0xaea000}, {0xaea000, 0xb1d000}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
	for _, bad := range []string{
		"00400000-00767000 r-xp 00000000 fe:00\n",          // too few fields
		"00400000 r-xp 00000000 fe:00 1 /x\n",              // no range
		"00400000-00767000 r-xp 00000000 fe00 1 /x\n",      // no minor
		"00400000-00767000 r-xp 00000000 fe:00 0x1 /x\n",   // inode not decimal
		"00767000-00400000 r-xp 00000000 fe:00 1 /x\n",     // end before start
		"0040000g-00767000 r-xp 00000000 fe:00 1 /x\n",     // not hex
		"00400000-00767000 r-xp 00000000 fe:zz 1 /x\n",     // minor not hex
		"00400000-00767000 r-xp 00000000 1fe:00:0 1 /x\n",  // major with a colon
		"00400000-00767000 r-xp 00000000 fffffffff:0 1 /x", // major too big
	} {
		if got, err := parseMaps([]byte(bad), 0xfe, 0, 1); err == nil {
			t.Errorf("%q: no error, got %x", bad, got)
		}
	}
}

// FuzzParseMaps checks that parseMaps never panics and returns only
// ranges that start before they end.
func FuzzParseMaps(f *testing.F) {
	f.Add([]byte("00400000-00767000 r-xp 00000000 fe:00 9977893 /tmp/nbdroot\n"), uint64(9977893))
	f.Add([]byte("7ffc87701000-7ffc87722000 rw-p 00000000 00:00 0 [stack]\n"), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, ino uint64) {
		spans, err := parseMaps(b, 0xfe, 0, ino)
		if err != nil {
			return
		}
		for _, s := range spans {
			if s.end < s.start {
				t.Fatalf("%x: ends before it starts", s)
			}
		}
	})
}

// TestGuestLockMemory checks that lockMemory locks the executable whole,
// every page the process has and every page it touches later, and makes
// resident nothing it only reserved (the Go runtime reserves hundreds of
// MiB it never touches). It runs in a child (this test binary again), so
// that the test process stays unlocked. It needs CAP_IPC_LOCK: a host
// without it skips, and qemu-test's TestGuest, which requires it to pass,
// runs it inside the guest in CI.
func TestGuestLockMemory(t *testing.T) {
	if os.Getenv("NBDROOT_TEST_MEMLOCK") == "1" {
		lockChild()
		return
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err == nil && lim.Cur != unix.RLIM_INFINITY && os.Geteuid() != 0 {
		t.Skipf("RLIMIT_MEMLOCK is %d bytes and this is not root: lockMemory needs CAP_IPC_LOCK", lim.Cur)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGuestLockMemory$", "-test.v")
	cmd.Env = append(os.Environ(), "NBDROOT_TEST_MEMLOCK=1")
	out, err := cmd.CombinedOutput()
	if bytes.Contains(out, []byte("lockMemory: mlockall: operation not permitted")) {
		t.Skipf("mlockall refused (no CAP_IPC_LOCK here): %s", bytes.TrimSpace(out))
	}
	if err != nil || !bytes.Contains(out, []byte("lockMemory: ok")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

// lockChild is TestGuestLockMemory's child.
func lockChild() {
	n, err := lockMemory()
	if err != nil {
		fmt.Println("lockMemory:", err)
		return
	}
	before, _, err := smapsKB()
	if err != nil {
		fmt.Println("lockMemory:", err)
		return
	}
	// Memory the process touches after the lock is locked as it is
	// faulted in (MCL_FUTURE|MCL_ONFAULT).
	after := make([]byte, 4<<20)
	for i := range after {
		after[i] = 1
	}
	total, exe, err := smapsKB()
	if err != nil {
		fmt.Println("lockMemory:", err)
		return
	}
	// Locked is a proportional size (the test's parent maps the same
	// executable), so it is held against Pss. What mlock never locks:
	// the vDSO and vvar (VM_SPECIAL).
	const slack = 64
	switch {
	case len(exe) == 0:
		fmt.Println("lockMemory: no mapping of the executable in smaps")
	case total["Locked"] < total["Pss"]-slack:
		fmt.Printf("lockMemory: %d kB locked of %d kB resident (Pss)\n", total["Locked"], total["Pss"])
	case total["Locked"]-before["Locked"] < len(after)>>10-slack:
		fmt.Printf("lockMemory: %d kB more locked after touching %d kB\n", total["Locked"]-before["Locked"], len(after)>>10)
	case total["Rss"] > 64<<10:
		fmt.Printf("lockMemory: %d kB resident: the reserved address space was made resident\n", total["Rss"])
	default:
		for _, m := range exe {
			if m.rss != m.size || !m.locked {
				fmt.Printf("lockMemory: executable mapping %s: %d of %d kB resident, locked %v\n", m.head, m.rss, m.size, m.locked)
				return
			}
		}
		fmt.Printf("lockMemory: ok, %d kB locked of %d kB Pss, the executable's %d kB whole\n", total["Locked"], total["Pss"], n>>10)
	}
	_ = after[len(after)-1]
}

// exeMapping is one mapping of the executable in /proc/self/smaps.
type exeMapping struct {
	head      string
	size, rss int // kB
	locked    bool
}

// smapsKB returns /proc/self/smaps_rollup's sizes in kB and the
// executable's mappings from /proc/self/smaps.
func smapsKB() (map[string]int, []exeMapping, error) {
	exePath, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil, nil, err
	}
	rollup, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return nil, nil, err
	}
	total := map[string]int{}
	for _, l := range strings.Split(string(rollup), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			total[k], _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil, nil, err
	}
	var exe []exeMapping
	var cur *exeMapping
	for _, l := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			cur = nil
			if len(f) >= 6 && f[5] == exePath {
				exe = append(exe, exeMapping{head: f[0] + " " + f[1]})
				cur = &exe[len(exe)-1]
			}
		case cur == nil || len(f) < 2:
		case f[0] == "Size:":
			cur.size, _ = strconv.Atoi(f[1])
		case f[0] == "Rss:":
			cur.rss, _ = strconv.Atoi(f[1])
		case f[0] == "VmFlags:":
			cur.locked = slices.Contains(f[1:], "lo")
		}
	}
	return total, exe, nil
}
