package main

import (
	"flag"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/config"
)

// TestHelp runs -h, --help and `help NAME` for every command of the table:
// each prints the same help on stdout with exit status 0, naming every flag.
func TestHelp(t *testing.T) {
	for _, c := range commands() {
		words := strings.Fields(c.name)
		status, want, errs := nbdroot(t, append([]string{"help"}, words...)...)
		if status != 0 || errs != "" || !strings.HasPrefix(want, "usage: nbdroot "+c.name+" ") {
			t.Errorf("help %s: exit %d, stdout %q, stderr %q", c.name, status, want, errs)
			continue
		}
		fs := c.newFlagSet()
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.Contains(want, "  -"+f.Name+" ") && !strings.Contains(want, "  -"+f.Name+"\n") {
				t.Errorf("help %s does not show -%s", c.name, f.Name)
			}
		})
		for _, h := range []string{"-h", "--help"} {
			status, out, errs := nbdroot(t, append(words, h)...)
			if status != 0 || errs != "" || out != want {
				t.Errorf("%s %s: exit %d, stderr %q, stdout differs from help's: %q", c.name, h, status, errs, out)
			}
		}
	}
	// A group's help is its commands' help.
	_, want, _ := nbdroot(t, "help", "config", "check")
	for _, args := range [][]string{{"help", "config"}, {"config", "-h"}} {
		if status, out, errs := nbdroot(t, args...); status != 0 || errs != "" || out != want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, status, out, errs)
		}
	}
}

// TestOverview checks that `nbdroot help` lists every command with its
// synopsis and summary.
func TestOverview(t *testing.T) {
	status, want, errs := nbdroot(t, "help")
	if status != 0 || errs != "" {
		t.Fatalf("help: exit %d, stderr %q", status, errs)
	}
	flat := strings.Join(strings.Fields(want), " ")
	for _, c := range commands() {
		for _, form := range c.synopsis {
			if s := "nbdroot " + c.name + " " + form; !strings.Contains(flat, s) {
				t.Errorf("help lacks %q", s)
			}
		}
		if !strings.Contains(want, "      "+c.summary+"\n") {
			t.Errorf("help lacks %q", c.summary)
		}
	}
	for _, h := range []string{"-h", "--help"} {
		if status, out, _ := nbdroot(t, h); status != 0 || out != want {
			t.Errorf("%s: exit %d, output differs from help's: %q", h, status, out)
		}
	}
}

// TestUsageErrors checks the one form of a usage error for every command
// and at the top level: one line on stderr, nothing on stdout, exit 2.
func TestUsageErrors(t *testing.T) {
	type usage struct {
		args []string
		want string // the whole of stderr
	}
	var tests []usage
	for _, c := range commands() {
		tests = append(tests, usage{append(strings.Fields(c.name), "--no-such-flag"),
			"nbdroot: " + c.name + ": flag provided but not defined: -no-such-flag (try 'nbdroot help " + c.name + "')\n"})
	}
	tests = append(tests,
		usage{nil, "nbdroot: want a command (try 'nbdroot help')\n"},
		usage{[]string{"frob"}, `nbdroot: unknown command "frob" (try 'nbdroot help')` + "\n"},
		usage{[]string{"help", "frob"}, `nbdroot: help: unknown command "frob" (try 'nbdroot help')` + "\n"},
		usage{[]string{"help", "probe", "x"}, `nbdroot: help: unknown command "probe x" (try 'nbdroot help')` + "\n"},
		usage{[]string{"config"}, "nbdroot: config: want a subcommand: check (try 'nbdroot help config')\n"},
		usage{[]string{"detach", "sda"}, `nbdroot: detach: "sda" is not an nbd device (want /dev/nbdN) (try 'nbdroot help detach')` + "\n"},
		usage{[]string{"status", "x"}, "nbdroot: status: takes no arguments (try 'nbdroot help status')\n"},
		usage{[]string{"boot", "--retry", "x"}, `nbdroot: boot: --retry: unexpected arguments ["x"] (try 'nbdroot help boot')` + "\n"},
	)
	for _, tc := range tests {
		status, out, errs := nbdroot(t, tc.args...)
		if status != 2 || out != "" || errs != tc.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, status, out, errs, tc.want)
		}
	}
}

// synopsisFlag matches a flag named in a synopsis, and othersFlags another
// command's flags named as a whole ("[list's flags]").
var (
	synopsisFlag = regexp.MustCompile(`(?:^|[ \[|])--?([a-z][a-z-]*)`)
	othersFlags  = regexp.MustCompile(`\[([a-z]+)'s flags\]`)
)

// TestSynopsisFlags checks each command's synopses against its flags: every
// flag they name exists, and every flag is named ("[list's flags]" names
// list's).
func TestSynopsisFlags(t *testing.T) {
	defined := map[string][]string{}
	for _, c := range commands() {
		fs := c.newFlagSet()
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) { defined[c.name] = append(defined[c.name], f.Name) })
	}
	for _, c := range commands() {
		var named []string
		for _, form := range c.synopsis {
			for _, m := range othersFlags.FindAllStringSubmatch(form, -1) {
				named = append(named, defined[m[1]]...)
			}
			for _, m := range synopsisFlag.FindAllStringSubmatch(form, -1) {
				named = append(named, m[1])
			}
		}
		slices.Sort(named)
		named = slices.Compact(named)
		if !slices.Equal(named, defined[c.name]) {
			t.Errorf("%s: the synopsis names flags %q, the command has %q", c.name, named, defined[c.name])
		}
	}
}

// TestREADMESynopses checks that README.md's Subcommands section shows each
// command's synopses as the table has them, and no others.
func TestREADMESynopses(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := readmeSynopses(t, string(b))
	for _, c := range commands() {
		var want []string
		for _, form := range c.synopsis {
			want = append(want, strings.Join(strings.Fields(form), " "))
		}
		if got := readme[c.name]; !slices.Equal(got, want) {
			t.Errorf("README.md shows nbdroot %s as\n\t%s\nwant (from commands.go)\n\t%s",
				c.name, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
		}
		delete(readme, c.name)
	}
	for name := range readme {
		t.Errorf("README.md shows a synopsis of %q, which is not a command", name)
	}
}

// readmeSynopses returns the synopses in the indented code blocks of
// README's Subcommands section by command name, each with its whitespace
// collapsed. A line starting "nbdroot " begins a synopsis; more indented
// lines continue it.
func readmeSynopses(t *testing.T, readme string) map[string][]string {
	_, section, ok := strings.Cut(readme, "\n## Subcommands\n")
	if !ok {
		t.Fatal(`README.md has no "## Subcommands"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var synopses []string
	fenced, in := false, false
	for line := range strings.Lines(section) {
		code, indented := strings.CutPrefix(strings.TrimRight(line, "\n"), "    ")
		switch {
		case strings.HasPrefix(line, "```"):
			fenced, in = !fenced, false
		case fenced || !indented:
			in = false
		case strings.HasPrefix(code, "nbdroot "):
			synopses, in = append(synopses, code), true
		case in && strings.HasPrefix(code, " "):
			synopses[len(synopses)-1] += " " + code
		default:
			in = false
		}
	}
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	// The longest name first, so "config check" wins over a "config".
	slices.SortFunc(names, func(a, b string) int { return len(b) - len(a) })
	got := map[string][]string{}
	for _, s := range synopses {
		s = strings.Join(strings.Fields(strings.TrimPrefix(s, "nbdroot ")), " ")
		name := strings.Fields(s)[0]
		for _, n := range names {
			if s == n || strings.HasPrefix(s, n+" ") {
				name = n
				break
			}
		}
		got[name] = append(got[name], strings.TrimPrefix(strings.TrimPrefix(s, name), " "))
	}
	if len(got) == 0 {
		t.Fatal("README.md's Subcommands section shows no synopsis")
	}
	return got
}

func TestWrapSynopsis(t *testing.T) {
	for _, c := range commands() {
		for _, form := range c.synopsis {
			lead := "usage: nbdroot " + c.name
			lines := wrapSynopsis(lead, form)
			if got, want := strings.Join(strings.Fields(strings.Join(lines, " ")), " "),
				strings.Join(strings.Fields(lead+" "+form), " "); got != want {
				t.Errorf("wrapped %q reads %q", want, got)
			}
			for i, l := range lines {
				if len(l) > synopsisWidth {
					t.Errorf("%q is longer than %d", l, synopsisWidth)
				}
				if strings.Count(l, "[") != strings.Count(l, "]") {
					t.Errorf("%q breaks inside brackets", l)
				}
				if i > 0 && !strings.HasPrefix(l, strings.Repeat(" ", len(lead)+1)) {
					t.Errorf("%q is not indented under the first argument", l)
				}
			}
		}
	}
	// One argument longer than the width stays whole, on its own line.
	long := "[" + strings.Repeat("x", synopsisWidth) + "]"
	if got := wrapSynopsis("nbdroot x", "[-a] "+long+" [-b]"); len(got) != 3 || strings.TrimSpace(got[1]) != long {
		t.Errorf("wrapSynopsis with a long argument: %q", got)
	}
}

// TestAttachSpec checks that attach's flags set their spec keys, and that
// the keys they leave alone have the spec's defaults (attach's own for
// --deadline).
func TestAttachSpec(t *testing.T) {
	spec := func(args ...string) (config.Spec, error) {
		t.Helper()
		fs := flag.NewFlagSet("attach", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		a := newAttach(fs)
		if err := fs.Parse(args); err != nil {
			return config.Spec{}, err
		}
		s, _, err := a.spec(fs.Arg(0))
		return s, err
	}
	got, err := spec("srv:2000/x")
	if err != nil {
		t.Fatal(err)
	}
	want := config.Defaults()
	want.Server.Endpoints = got.Server.Endpoints
	want.Server.Deadline = 15 * time.Second
	if !reflect.DeepEqual(got, want) {
		t.Errorf("without flags:\n got %+v\nwant %+v", got, want)
	}

	got, err = spec("--interface", "ioctl", "--connections", "4", "--read-only", "--block-size", "4096",
		"--request-timeout", "3s", "--dead-conn-timeout", "30s", "--deadline", "1m", "--tls", "srv:2000/x")
	if err != nil {
		t.Fatal(err)
	}
	want.Device = config.Device{Index: config.AutoIndex, Interface: config.InterfaceIoctl, Connections: 4, ReadOnly: true,
		BlockSize: 4096, Timeout: 3 * time.Second, DeadConnTimeout: 30 * time.Second}
	want.Server.Deadline = time.Minute
	want.TLS.Enabled = true
	if !reflect.DeepEqual(got, want) {
		t.Errorf("with flags:\n got %+v\nwant %+v", got, want)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--interface", "nbd"}, `"nbd" is not one of auto, netlink, ioctl`},
		{[]string{"--connections", "0"}, "0 is out of range 1-64"},
		{[]string{"--connections", "65"}, "65 is out of range 1-64"},
		{[]string{"--block-size", "3000"}, "not a power of two"},
		{[]string{"--block-size", "-1"}, "-1 is not a power of two"},
		{[]string{"--request-timeout", "2.5s"}, "not a whole number of seconds"},
		{[]string{"--dead-conn-timeout", "soon"}, "not a duration"},
		{[]string{"--read-only=maybe"}, "want true or false"},
	} {
		if _, err := spec(append(tc.args, "srv:2000/x")...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		}
	}
	status, _, errs := nbdroot(t, "attach", "--connections", "0", "srv:2000/x")
	if want := `nbdroot: attach: invalid value "0" for flag -connections: 0 is out of range 1-64 (try 'nbdroot help attach')` + "\n"; status != 2 || errs != want {
		t.Errorf("attach --connections 0: exit %d, stderr %q; want 2 and %q", status, errs, want)
	}

	// Help shows the defaults: the spec's, and attach's own.
	_, help, _ := nbdroot(t, "attach", "-h")
	for _, want := range []string{"(default auto)", "(default 1)", "(default 2m)", "(default 15s)"} {
		if !strings.Contains(help, want) {
			t.Errorf("attach -h lacks %q", want)
		}
	}
	if strings.Contains(help, "(default 0") || strings.Contains(help, "(default false)") {
		t.Errorf("attach -h shows a zero default:\n%s", help)
	}
}

// TestREADMEFuzzTargets checks that README's list of fuzz targets (the
// `make fuzz` sentence) names every Fuzz function in the tree, and nothing
// else.
func TestREADMEFuzzTargets(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile(`\bFuzz[A-Z]\w*`).FindAllString(string(b), -1) {
		listed[m] = true
	}
	def := regexp.MustCompile(`(?m)^func (Fuzz[A-Z]\w*)\(`)
	err = filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && p != "../.." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range def.FindAllStringSubmatch(string(src), -1) {
			if !listed[m[1]] {
				t.Errorf("%s: %s is not in README.md's list of fuzz targets", p, m[1])
			}
			delete(listed, m[1])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name := range listed {
		t.Errorf("README.md names %s, which is no fuzz target", name)
	}
}
