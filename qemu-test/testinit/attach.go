package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// attachScenario runs nbdroot's attach (with --swap), status and detach
// from the booted root against a second export (testinit.attach=SPEC),
// whose image holds testrig.RawImage's pattern: each 8-byte word its index
// in hex.
func attachScenario(args map[string]string) {
	const nbdroot = "/usr/sbin/nbdroot"
	out, err := run(nbdroot, "attach", "--swap", args["testinit.attach"])
	say("attach=%s err=%s", out, errName(err))
	if err != nil {
		return
	}
	dev := out
	pid := pidByArgv0("nbdroot-keeper")
	// Read until two readings 100 ms apart agree (at most 2 s), so that
	// what is asserted is the keeper's state, not one reading's: one CI
	// run read 3772 kB locked of 3772 resident, where every other run
	// reads about 8400 kB, and the mappings below are there to say why if
	// it happens again.
	kb := rollupKB(pid)
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		again := rollupKB(pid)
		if again["Locked"] == kb["Locked"] && again["Rss"] == kb["Rss"] {
			break
		}
		say("attach keeper reading Locked=%dkB Rss=%dkB, then Locked=%dkB Rss=%dkB", kb["Locked"], kb["Rss"], again["Locked"], again["Rss"])
		kb = again
	}
	say("attach keeper Locked=%dkB Rss=%dkB", kb["Locked"], kb["Rss"])
	for _, m := range exeMappings(pid) {
		say("attach keeper exe %s", m)
	}
	status, err := run(nbdroot, "status")
	for _, l := range strings.Split(status, "\n") {
		say("status: %s", l)
	}
	say("status-err=%s", errName(err))
	say("read=%s", checkPattern(dev, 1<<20))
	out, err = run(nbdroot, "detach", dev)
	say("detach=%s %s", errName(err), out)
	status, _ = run(nbdroot, "status")
	for _, l := range strings.Split(status, "\n") {
		say("status-after: %s", l)
	}
}

// pidByArgv0 returns the pid of a process whose argv[0] is name, or "".
func pidByArgv0(name string) string {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if argv0, _, _ := strings.Cut(string(b), "\x00"); err == nil && argv0 == name {
			return e.Name()
		}
	}
	return ""
}

// run runs a command and returns its trimmed combined output.
func run(name string, arg ...string) (string, error) {
	b, err := exec.Command(name, arg...).CombinedOutput()
	return strings.TrimSpace(string(b)), err
}

// checkPattern reads 64 KiB of dev at off and checks the index pattern.
func checkPattern(dev string, off int64) string {
	f, err := os.Open(dev)
	if err != nil {
		return errName(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	if _, err := f.ReadAt(buf, off); err != nil {
		return errName(err)
	}
	for i := 0; i < len(buf); i += 8 {
		if want := fmt.Sprintf("%08x", (off+int64(i))/8); string(buf[i:i+8]) != want {
			return fmt.Sprintf("FAIL at %d: %q, want %q", off+int64(i), buf[i:i+8], want)
		}
	}
	return "ok"
}

// exeMappings summarises pid's mappings of its executable from
// /proc/PID/smaps: "RANGE PERMS Rss=N Locked=N VmFlags=FLAGS" (VmFlags
// "lo" is locked, "lf" locked on fault).
func exeMappings(pid string) []string {
	exe, err := os.Readlink("/proc/" + pid + "/exe")
	if err != nil {
		return nil
	}
	b, _ := os.ReadFile("/proc/" + pid + "/smaps")
	var out []string
	cur := ""
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 6 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			cur = ""
			if f[5] == exe {
				cur = f[0] + " " + f[1]
			}
		case cur != "" && len(f) >= 2 && (f[0] == "Rss:" || f[0] == "Locked:"):
			cur += " " + strings.TrimSuffix(f[0], ":") + "=" + f[1]
		case cur != "" && len(f) >= 1 && f[0] == "VmFlags:":
			out = append(out, cur+" VmFlags="+strings.Join(f[1:], ","))
			cur = ""
		}
	}
	return out
}
