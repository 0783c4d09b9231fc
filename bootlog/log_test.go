package bootlog

import (
	"strings"
	"testing"
	"time"
)

func TestAgeFromStat(t *testing.T) {
	for _, tc := range []struct {
		name, stat string
		now, want  time.Duration
		err        bool
	}{
		// Field 22 (starttime) is 412 ticks: the process began 4.12 s
		// after boot.
		{"init", "1 (init) S 0 1 1 0 -1 4194560 190 0 0 0 1 5 0 0 20 0 1 0 412 10000 200 18446744073709551615", 5 * time.Second, 880 * time.Millisecond, false},
		{"name with spaces and parens", "77 (a) b (c)) R 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0", 2 * time.Second, time.Second, false},
		{"clock behind", "1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 900 0 0", time.Second, 0, false},
		{"no name", "1 x S 0", time.Second, 0, true},
		{"short", "1 (x) S 0 1 1", time.Second, 0, true},
		{"bad starttime", "1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5 0 0", time.Second, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ageFromStat(tc.stat, tc.now)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("ageFromStat = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestProcessAge(t *testing.T) {
	age, err := ProcessAge()
	if err != nil {
		t.Skipf("no /proc/self/stat here: %v", err)
	}
	// This test binary started before the test ran, and not days ago.
	if age < 0 || age > 24*time.Hour {
		t.Fatalf("ProcessAge = %v", age)
	}
	if start := ProcessStart(); time.Since(start) < age-time.Second {
		t.Fatalf("ProcessStart %v is later than the age %v says", start, age)
	}
}

func TestExecStamp(t *testing.T) {
	for _, tc := range []struct {
		name, log string
		want      time.Duration
		err       string
	}{
		{"syslog's form", "<6>[    0.000000] Linux version 6.1.0\n<6>[    3.568880] Run /init as init process\n<6>[    3.900000] nbdroot: start\n", 3568880 * time.Microsecond, ""},
		{"rdinit=", "<6>[   12.500000] Run /bin/sh as init process\n", 12500 * time.Millisecond, ""},
		{"the last one", "<6>[    3.000000] Run /init as init process\n<6>[    9.250000] Run /sbin/init as init process\n", 9250 * time.Millisecond, ""},
		{"no stamps", "<6>Run /init as init process\n", 0, "no stamped line"},
		{"none", "<6>[    1.000000] Freeing initrd memory: 3840K\n", 0, "no stamped line"},
		{"a bad stamp", "<6>[   x.y] Run /init as init process\n", 0, "bad stamp"},
		{"a stamp past time.Duration", "<6>[10e9] Run /init as init process\n", 0, "bad stamp"},
		{"NaN", "<6>[NaN] Run /init as init process\n", 0, "bad stamp"},
		{"message text alike", "<6>[    2.000000] foo: Run /init as init process\n", 0, "no stamped line"},
		{"empty", "", 0, "no stamped line"},
		{"newlines only", "\n\n\n", 0, "no stamped line"},
		{"no newline at the end", "<6>[    1.000000] x\n<6>[    4.000000] Run /init as init process", 4 * time.Second, ""},
		{"the first line", "<6>[    0.500000] Run /init as init process\n<6>[    1.000000] x\n\n", 500 * time.Millisecond, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := execStamp([]byte(tc.log))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("execStamp = %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || (got-tc.want).Abs() > time.Microsecond {
				t.Fatalf("execStamp = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// FuzzExecStamp feeds arbitrary kernel logs: no panic, and a stamp found
// is never negative.
func FuzzExecStamp(f *testing.F) {
	f.Add([]byte("<6>[    3.568880] Run /init as init process\n"))
	f.Add([]byte("<6>[ 1e9] Run /init as init process"))
	f.Add([]byte("] Run [ as init process\n"))
	f.Fuzz(func(t *testing.T, log []byte) {
		if d, err := execStamp(log); err == nil && d < 0 {
			t.Errorf("execStamp(%q) = %v", log, d)
		}
	})
}

func TestCPUFromStat(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		stat string
		want CPUTime
		bad  bool
	}{
		{"cpu  120 5 80 250 13 7 2 0 0 0\ncpu0 120 5 80 250 13 7 2 0 0 0\n", CPUTime{User: ms(1250), Kernel: ms(890), Idle: ms(2630)}, false},
		{"cpu  1 2 3 4 5 6 7", CPUTime{User: ms(30), Kernel: ms(160), Idle: ms(90)}, false},
		{"cpu0 1 2 3 4 5 6 7\n", CPUTime{}, true},
		{"cpu  1 2 3 x 5 6 7\n", CPUTime{}, true},
		{"cpu  1 2 3 4 5 6\n", CPUTime{}, true},
		{"", CPUTime{}, true},
	} {
		got, err := cpuFromStat(tc.stat)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("cpuFromStat(%q) = %+v, %v; want %+v, error %v", tc.stat, got, err, tc.want, tc.bad)
		}
	}
	if _, err := ReadCPUTime(); err != nil {
		t.Errorf("ReadCPUTime on this machine: %v", err)
	}
	a, b := CPUTime{User: ms(100), Kernel: ms(50), Idle: ms(10)}, CPUTime{User: ms(40), Kernel: ms(20), Idle: ms(10)}
	if got := a.Sub(b); got != (CPUTime{User: ms(60), Kernel: ms(30)}) {
		t.Errorf("Sub = %+v", got)
	}
}
