package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "nbdroot.toml")
	if err := os.WriteFile(conf, []byte("[device]\nconnections = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmdFile := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdFile, []byte("quiet nbdroot=srv:2000/root rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args         []string
		status       int
		out, errText []string // substrings
	}{
		{args: []string{"check", "--config", conf, "--cmdline", "nbdroot=10.0.0.1/root nbdroot.device.connections=4"}, status: 0,
			out: []string{`servers = ["10.0.0.1:10809/root"]  # cmdline: nbdroot=10.0.0.1/root`, "connections = 4", "# cmdline: nbdroot.device.connections=4", "# default"}},
		{args: []string{"check", "--config", conf, "--cmdline-file", cmdFile}, status: 0,
			out: []string{`servers = ["srv:2000/root"]`, "connections = 2", conf + ":2", "# cmdline: rw"}},
		{args: []string{"check", "--config", conf, "--cmdline", "nbdroot=srv:99999/x nbdroot.device.conections=4"}, status: 2,
			errText: []string{
				"nbdroot: cmdline: nbdroot=\"srv:99999/x\": port 99999 is out of range 1-65535\n" +
					"nbdroot: cmdline: nbdroot.device.conections=\"4\": unknown key (did you mean nbdroot.device.connections?)\n" +
					"nbdroot: config check: 2 problems in the spec (listed above)\n"}},
		{args: []string{"check", "--config", conf, "--cmdline", "nbdroot=srv:0/x"}, status: 2,
			errText: []string{"nbdroot: cmdline: nbdroot=\"srv:0/x\": port 0 is out of range 1-65535\n"}},
		{args: []string{"check", "--config", filepath.Join(dir, "missing.toml"), "--cmdline", "nbdroot=a/x"}, status: 2,
			errText: []string{"missing.toml: no such file or directory"}},
		{args: []string{"check", "--cmdline", "x", "--cmdline-file", cmdFile}, status: 2, errText: []string{"exclusive"}},
		{args: []string{"check", "extra"}, status: 2, errText: []string{`unexpected argument "extra"`}},
		{args: []string{"frob"}, status: 2, errText: []string{"config: want a subcommand"}},
		{args: []string{"check", "--cmdline-file", filepath.Join(dir, "nope")}, status: 1, errText: []string{"reading the kernel command line"}},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		got := run(append([]string{"nbdroot", "config"}, tc.args...), stdio{&out, &errb})
		if got != tc.status {
			t.Errorf("%q: status %d, want %d; stderr:\n%s", tc.args, got, tc.status, errb.String())
		}
		for _, s := range tc.out {
			if !strings.Contains(out.String(), s) {
				t.Errorf("%q: stdout lacks %q:\n%s", tc.args, s, out.String())
			}
		}
		for _, s := range tc.errText {
			if !strings.Contains(errb.String(), s) {
				t.Errorf("%q: stderr lacks %q:\n%s", tc.args, s, errb.String())
			}
		}
	}
}
