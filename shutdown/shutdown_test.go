package shutdown

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountsUnder(t *testing.T) {
	// A mount table as systemd-shutdown leaves it after pivoting into the
	// exitrd: the old root with its API mounts and an overlay's layers.
	table := `1 0 8:1 / / rw - tmpfs tmpfs rw
20 1 43:0 / /oldroot ro - ext4 /dev/nbd0 ro
21 20 0:5 / /oldroot/dev rw - devtmpfs devtmpfs rw
22 21 0:20 / /oldroot/dev/pts rw - devpts devpts rw
23 20 0:21 / /oldroot/run rw - tmpfs tmpfs rw
24 23 0:22 / /oldroot/run/my\040mount rw - tmpfs tmpfs rw
25 20 0:23 / /oldroot/run rw - tmpfs tmpfs rw
26 1 0:24 / /oldrootx rw - tmpfs tmpfs rw
27 1 0:3 / /proc rw - proc proc rw
`
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := mountsUnder(p, "/oldroot/")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/oldroot/run/my mount", "/oldroot/dev/pts", "/oldroot/run", "/oldroot/run", "/oldroot/dev", "/oldroot"}
	// Deepest first; among equals the later mount first (25 before 23, 24 before 22).
	if !slices.Equal(got, want) {
		t.Errorf("mountsUnder =\n %q\nwant\n %q", got, want)
	}
	if _, err := mountsUnder(filepath.Join(t.TempDir(), "none"), "/oldroot"); err == nil {
		t.Error("a missing mount table is not an error")
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/a\011b`:   "/a\tb",
		`/a\134b`:   `/a\b`,
		`/plain`:    "/plain",
		`/trail\04`: `/trail\04`,
		`/bad\089`:  `/bad\089`,
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseVerb(t *testing.T) {
	for in, want := range map[string]Verb{"reboot": VerbReboot, "poweroff": VerbPoweroff, "halt": VerbHalt, "kexec": VerbKexec, "exit": VerbPoweroff} {
		if got, err := ParseVerb(in); err != nil || got != want {
			t.Errorf("ParseVerb(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Reboot", "suspend"} {
		if _, err := ParseVerb(bad); err == nil {
			t.Errorf("ParseVerb(%q) succeeded", bad)
		}
	}
	_, err := ParseVerb("suspend")
	if want := "shutdown: verb suspend: want reboot, poweroff, halt or kexec"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

func TestInstall(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stage  bool
		broken bool // the stage cannot be made: a copy, and Copied says why
	}{
		{"copy", false, false},
		{"stage", true, false},
		{"broken-stage", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			self := filepath.Join(dir, "self")
			if err := os.WriteFile(self, []byte("#!binary"), 0o755); err != nil {
				t.Fatal(err)
			}
			exitrd := filepath.Join(dir, "run", "initramfs")
			stage := ""
			if tc.stage {
				stage = filepath.Join(dir, "stage")
				t.Cleanup(func() { unix.Unmount(exitrd, unix.MNT_DETACH) })
			}
			if tc.broken {
				stage = filepath.Join(self, "stage") // under a file
			}
			x, err := Install(exitrd, stage, self)
			if err != nil {
				t.Fatal(err)
			}
			bin := x.Binary
			if bin != filepath.Join(exitrd, Binary) {
				t.Errorf("Install = %q", bin)
			}
			if b, err := os.ReadFile(filepath.Join(exitrd, Program)); err != nil || string(b) != "#!binary" {
				t.Errorf("%s/%s reads %q, %v", exitrd, Program, b, err)
			}
			fi, err := os.Stat(bin)
			if err != nil || fi.Mode().Perm()&0o111 == 0 {
				t.Fatalf("%s is not executable: %v", bin, err)
			}
			for _, m := range mountPoints() {
				if fi, err := os.Stat(filepath.Join(exitrd, m)); err != nil || !fi.IsDir() {
					t.Errorf("mount point %s missing: %v", m, err)
				}
			}
			// With a stage the exitrd's nbdroot is self, not a copy, unless
			// binding was refused (not root): then it is a copy, and the
			// stage is gone.
			orig, _ := os.Stat(self)
			shared := os.SameFile(fi, orig)
			if shared != (x.Copied == nil) {
				t.Errorf("%s is self: %v, but Copied = %v", bin, shared, x.Copied)
			}
			if tc.broken && (shared || x.Copied == nil || !strings.Contains(x.Copied.Error(), "not a directory")) {
				t.Errorf("with a stage under a file: %s is self: %v, Copied = %v", bin, shared, x.Copied)
			}
			if tc.stage && !tc.broken && !shared {
				if os.Geteuid() == 0 {
					t.Errorf("with a stage, %s is a copy of %s", bin, self)
				} else {
					t.Logf("not root: binding the stage was refused, and %s is a copy", bin)
				}
				if _, err := os.Stat(stage); !os.IsNotExist(err) {
					t.Errorf("the stage is left after falling back to a copy: %v", err)
				}
			}
			if !tc.stage && shared {
				t.Errorf("without a stage, %s is %s itself", bin, self)
			}
			// Installing again (a retried boot) replaces the files.
			if _, err := Install(exitrd, stage, self); err != nil {
				t.Errorf("second Install: %v", err)
			}
			if b, err := os.ReadFile(bin); err != nil || string(b) != "#!binary" {
				t.Errorf("after the second Install %s reads %q, %v", bin, b, err)
			}
		})
	}
	if !IsProgram("/shutdown") || IsProgram("/init") {
		t.Error("IsProgram")
	}
}
