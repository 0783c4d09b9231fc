package main

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// exitrd does what systemd-shutdown does at the very end, so the exitrd
// can be tested without systemd: it kills every process but the @ ones,
// syncs, remounts the root read-only, binds the API file systems into
// /run/initramfs, pivots into it with the old root at /oldroot and executes
// /shutdown VERB as PID 1. It returns only when that cannot be done.
func exitrd(args map[string]string) {
	verb := args["testinit.verb"]
	if verb == "" {
		verb = "poweroff"
	}
	if err := writeSynced("/nbdroot-test/written", args["testinit.token"]); err != nil {
		say("write=FAIL %v", err)
		return
	}
	say("write=ok token=%s", args["testinit.token"])
	if fi, err := os.Stat("/run/initramfs/shutdown"); err != nil || fi.Mode().Perm()&0o111 == 0 {
		say("exitrd=missing %v", err)
		return
	}
	killSpree()
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		say("exitrd=remount-ro-failed %v", err)
		return
	}
	const dir = "/run/initramfs"
	steps := []struct {
		what string
		err  error
	}{
		{"bind exitrd", unix.Mount(dir, dir, "", unix.MS_BIND, "")},
		{"private", unix.Mount("", dir, "", unix.MS_PRIVATE, "")},
	}
	for _, m := range []string{"/proc", "/sys", "/dev", "/run"} {
		steps = append(steps, struct {
			what string
			err  error
		}{"bind " + m, unix.Mount(m, filepath.Join(dir, m), "", unix.MS_BIND|unix.MS_REC, "")})
	}
	for _, s := range steps {
		if s.err != nil {
			say("exitrd=%s-failed %v", strings.ReplaceAll(s.what, " ", "-"), s.err)
			return
		}
	}
	if err := unix.Chdir(dir); err != nil {
		say("exitrd=chdir-failed %v", err)
		return
	}
	if err := unix.PivotRoot(".", "oldroot"); err != nil {
		say("exitrd=pivot-failed %v", err)
		return
	}
	_ = unix.Chdir("/")
	say("exitrd=exec verb=%s uptime=%.3f", verb, uptime())
	err := unix.Exec("/shutdown", []string{"/shutdown", verb}, os.Environ())
	say("exitrd=exec-failed %v", err)
}

// killSpree sends SIGTERM, then SIGKILL, to every process but PID 1,
// kernel threads and those whose argv[0] starts with "@", as
// systemd-shutdown's broadcast_signal does.
func killSpree() {
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGKILL} {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid := 0
			for _, c := range e.Name() {
				if c < '0' || c > '9' {
					pid = -1
					break
				}
				pid = pid*10 + int(c-'0')
			}
			if pid <= 1 {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err != nil || len(b) == 0 || b[0] == '@' {
				continue // kernel thread, gone, or a root storage daemon
			}
			_ = unix.Kill(pid, sig)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
