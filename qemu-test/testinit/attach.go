package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
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
	kb := rollupKB(pidByArgv0("nbdroot-keeper"))
	say("attach keeper Locked=%dkB Rss=%dkB", kb["Locked"], kb["Rss"])
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
