package keeper

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
)

func thpDisabled(t *testing.T) int {
	t.Helper()
	v, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0)
	if err != nil {
		t.Skipf("PR_GET_THP_DISABLE: %v (kernel before 3.15?)", err)
	}
	return v
}

// TestWithoutTHP checks that the keeper is forked with transparent huge
// pages off, and that the starter gets back the setting it had.
func TestWithoutTHP(t *testing.T) {
	for _, before := range []int{0, 1} {
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, uintptr(before), 0, 0, 0); err != nil {
			t.Skipf("PR_SET_THP_DISABLE: %v", err)
		}
		during := -1
		if err := withoutTHP(func() error { during = thpDisabled(t); return nil }); err != nil {
			t.Fatal(err)
		}
		if during != 1 {
			t.Errorf("before %d: THP disable during the start = %d, want 1", before, during)
		}
		if after := thpDisabled(t); after != before {
			t.Errorf("THP disable after the start = %d, want %d as before", after, before)
		}
	}
	_ = unix.Prctl(unix.PR_SET_THP_DISABLE, 0, 0, 0, 0)
}

// The task flags PR_SET_IO_FLUSHER sets (include/linux/sched.h).
const (
	pfMemallocNoIO  = 0x00080000
	pfLocalThrottle = 0x00100000
)

// unflushing lists the threads of this process (by /proc/self/task) that
// lack the I/O flusher flags, and counts them all.
func unflushing() (missing []string, total int, err error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, 0, err
	}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/stat")
		if err != nil {
			continue // the thread is gone
		}
		// Fields after the command's ")": state, ppid, pgrp, session,
		// tty_nr, tpgid, flags.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		flags, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			return nil, 0, fmt.Errorf("task %s: flags %q: %w", task.Name(), f[6], err)
		}
		total++
		if flags&(pfMemallocNoIO|pfLocalThrottle) != pfMemallocNoIO|pfLocalThrottle {
			missing = append(missing, fmt.Sprintf("%s (flags %#x)", task.Name(), flags))
		}
	}
	return missing, total, nil
}

// TestGuestProtect checks that protect makes every thread of the
// process an I/O flusher, those the runtime had before and those it starts
// after: PR_SET_IO_FLUSHER marks only the calling thread. It runs in a
// child (this test binary again) so that the test process stays unmarked.
// It needs CAP_SYS_RESOURCE, so it runs in qemu-test's TestGuest; a
// container without that capability skips it.
func TestGuestProtect(t *testing.T) {
	if os.Getenv("NBDROOT_TEST_PROTECT") == "1" {
		protectChild()
		return
	}
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 0, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_IO_FLUSHER: %v (needs CAP_SYS_RESOURCE and Linux 5.6)", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGuestProtect$", "-test.v")
	cmd.Env = append(os.Environ(), "NBDROOT_TEST_PROTECT=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("protect: ok")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

// protectChild is TestGuestProtect's child: protect, then threads
// started after it, then every thread checked.
func protectChild() {
	// Threads the runtime has before protect: goroutines locked to
	// threads of their own, parked.
	hold := make(chan struct{})
	defer close(hold)
	lockThreads := func(n int) {
		started := make(chan struct{})
		for range n {
			go func() {
				runtime.LockOSThread()
				started <- struct{}{}
				<-hold
			}()
		}
		for range n {
			<-started
		}
	}
	lockThreads(3)
	var logs bytes.Buffer
	protect(bootlog.New(&logs, time.Now()), "keeper nbd0")
	lockThreads(3) // threads started after protect
	missing, total, err := unflushing()
	switch {
	case err != nil:
		fmt.Println("protect:", err)
	case logs.Len() > 0:
		fmt.Printf("protect logged: %s", logs.String())
	case len(missing) > 0:
		fmt.Printf("protect: %d of %d threads are not I/O flushers: %s\n", len(missing), total, strings.Join(missing, ", "))
	default:
		fmt.Printf("protect: ok, all %d threads are I/O flushers\n", total)
	}
}

func TestProcs(t *testing.T) {
	for _, tc := range []struct {
		tls         bool
		conns, cpus int
		want        int
	}{
		{false, 1, 64, 1},
		{false, 8, 64, 1},
		{true, 1, 64, 2},
		{true, 4, 64, 8},
		{true, 4, 2, 2},
		{true, 1, 1, 1},
		{true, 0, 4, 1},
	} {
		var s config.Spec
		s.TLS.Enabled, s.Device.Connections = tc.tls, tc.conns
		if got := procs(&s, tc.cpus); got != tc.want {
			t.Errorf("procs(TLS %v, %d connections, %d CPUs) = %d, want %d", tc.tls, tc.conns, tc.cpus, got, tc.want)
		}
	}
}

// TestWithGODEBUG: the keeper's settings join the GODEBUG it inherits, last
// (the runtime takes the last of a repeated setting), and leave one GODEBUG.
func TestWithGODEBUG(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want []string
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=memprofilerate=0"}},
		{[]string{"GODEBUG=", "TERM=linux"}, []string{"TERM=linux", "GODEBUG=memprofilerate=0"}},
		{[]string{"GODEBUG=madvdontneed=1,memprofilerate=512", "PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=madvdontneed=1,memprofilerate=512,memprofilerate=0"}},
		{[]string{"GODEBUG=a=1", "GODEBUG=b=2"}, []string{"GODEBUG=a=1,b=2,memprofilerate=0"}},
		{[]string{"XGODEBUG=a=1"}, []string{"XGODEBUG=a=1", "GODEBUG=memprofilerate=0"}},
	} {
		if got := withGODEBUG(tc.env, keeperGODEBUG); !slices.Equal(got, tc.want) {
			t.Errorf("withGODEBUG(%q) = %q, want %q", tc.env, got, tc.want)
		}
	}
}

// TestKeeperEnv: the keeper's GOGC and GOMAXPROCS replace any inherited,
// after the GODEBUG settings, and nothing else changes.
func TestKeeperEnv(t *testing.T) {
	var plain, tls config.Spec
	tls.TLS.Enabled, tls.Device.Connections = true, 2
	for _, tc := range []struct {
		env  []string
		spec *config.Spec
		cpus int
		want []string
	}{
		{[]string{"PATH=/bin"}, &plain, 8, []string{"PATH=/bin", "GODEBUG=memprofilerate=0", "GOGC=25", "GOMAXPROCS=1"}},
		{[]string{"GOGC=off", "GOMAXPROCS=64", "TERM=linux", "XGOGC=1"}, &tls, 8, []string{"TERM=linux", "XGOGC=1", "GODEBUG=memprofilerate=0", "GOGC=25", "GOMAXPROCS=4"}},
	} {
		if got := keeperEnv(tc.env, tc.spec, tc.cpus); !slices.Equal(got, tc.want) {
			t.Errorf("keeperEnv(%q) = %q, want %q", tc.env, got, tc.want)
		}
	}
}
