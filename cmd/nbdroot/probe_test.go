package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/internal/testrig"
)

// nbdroot runs the command line and returns its exit status, stdout and
// stderr.
func nbdroot(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	status := run(append([]string{"nbdroot"}, args...), stdio{&out, &errb})
	t.Logf("nbdroot %s → %d\n%s%s", strings.Join(args, " "), status, out.String(), errb.String())
	return status, out.String(), errb.String()
}

func TestProbeNbdkit(t *testing.T) {
	s := testrig.Nbdkit(t, "memory", "64M")
	spec := "nbd://" + s.Addr
	status, out, errs := nbdroot(t, "probe", spec)
	if status != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", status, errs)
	}
	for _, want := range []string{
		"server:      " + s.Addr + "\n",
		`export:      "" (default export)` + "\n",
		"size:        67108864 (64 MiB)\n",
		"flags:       HAS_FLAGS,SEND_FLUSH,",
		"block sizes: not advertised\n",
		"path:        go\n",
		"tls:         off\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	status, out, _ = nbdroot(t, "probe", "--json", spec)
	if status != 0 {
		t.Fatalf("--json: exit %d", status)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	for k, v := range map[string]any{
		"server": s.Addr, "name": "", "size": float64(64 << 20), "size_human": "64 MiB",
		"path": "go", "tls": false, "min_block_size": float64(0),
	} {
		if got[k] != v {
			t.Errorf("JSON %s = %v (%T), want %v", k, got[k], got[k], v)
		}
	}
	if flags, _ := got["flags"].([]any); len(flags) == 0 || flags[0] != "HAS_FLAGS" {
		t.Errorf("JSON flags = %v", got["flags"])
	}
}

func TestProbeTLS(t *testing.T) {
	cs := testrig.Certs(t, t.TempDir())
	s := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "--tls-verify-peer", "memory", "1M")
	spec := "nbd://" + s.Addr
	status, out, _ := nbdroot(t, "probe", "--ca", cs.CA, "--cert", cs.ClientCert, "--key", cs.ClientKey, spec)
	if status != 0 {
		t.Fatalf("exit %d", status)
	}
	if !strings.Contains(out, "tls:         TLS 1.") || !strings.Contains(out, "size:        1048576 (1 MiB)\n") {
		t.Errorf("output:\n%s", out)
	}

	// Plain text against a TLS-only server: exit 1 with the reason.
	status, _, errs := nbdroot(t, "probe", spec)
	if status != 1 || !strings.HasPrefix(errs, "nbdroot: probe: "+s.Addr+"/") || !strings.Contains(errs, "server requires TLS") {
		t.Errorf("plaintext probe: exit %d, stderr %q", status, errs)
	}
	// The wrong CA: exit 1, naming the certificate problem.
	status, _, errs = nbdroot(t, "probe", "--ca", cs.WrongCA, "--cert", cs.ClientCert, "--key", cs.ClientKey, spec)
	if status != 1 || !strings.Contains(errs, "certificate signed by unknown authority") {
		t.Errorf("wrong CA: exit %d, stderr %q", status, errs)
	}
	// --no-verify skips the server check but still presents the certificate.
	status, _, _ = nbdroot(t, "probe", "--no-verify", "--ca", cs.WrongCA, "--cert", cs.ClientCert, "--key", cs.ClientKey, spec)
	if status != 0 {
		t.Errorf("--no-verify: exit %d", status)
	}
}

func TestProbeRefusedExport(t *testing.T) {
	dir := t.TempDir()
	s := testrig.QemuNBD(t, testrig.RawImage(t, filepath.Join(dir, "disk.img"), 1<<20), "disk")
	status, out, _ := nbdroot(t, "probe", s.Addr+"/disk")
	if status != 0 || !strings.Contains(out, "export:      disk\n") || !strings.Contains(out, "block sizes: min 1, preferred 4096, max 33554432\n") {
		t.Errorf("exit %d, output:\n%s", status, out)
	}
	status, _, errs := nbdroot(t, "probe", s.Addr+"/nosuch")
	want := "nbdroot: probe: " + s.Addr + "/nosuch: "
	if status != 1 || !strings.HasPrefix(errs, want) || !strings.Contains(errs, "NBD_REP_ERR_UNKNOWN") || !strings.Contains(errs, "export 'nosuch' not present") {
		t.Errorf("exit %d, stderr %q; want 1 and %q... with qemu-nbd's message", status, errs, want)
	}
	if strings.Count(errs, "\n") != 1 {
		t.Errorf("error is not one line: %q", errs)
	}
}

func TestProbeUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"probe"}, "want exactly one SPEC"},
		{[]string{"probe", "a:1/x", "b:1/y"}, "want exactly one SPEC"},
		{[]string{"probe", "--bogus", "a:1/x"}, "flag provided but not defined"},
		{[]string{"probe", "--cert", "c.pem", "a:1/x"}, "--cert and --key go together"},
		{[]string{"probe", "--timeout", "-1s", "a:1/x"}, "negative"},
		{[]string{"probe", "srv:99999/root"}, "99999"},
		{[]string{"list", "srv:99999"}, "99999"},
	} {
		status, _, errs := nbdroot(t, tc.args...)
		if status != 2 || !strings.Contains(errs, tc.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line with %q", tc.args, status, errs, tc.want)
		}
	}
	status, out, errs := nbdroot(t, "probe", "-h")
	if status != 0 || errs != "" || !strings.Contains(out, "usage: nbdroot probe") || !strings.Contains(out, "-tls-hostname") {
		t.Errorf("-h: exit %d, stdout %q, stderr %q", status, out, errs)
	}
}

func TestProbeConnectionRefused(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	status, _, errs := nbdroot(t, "probe", "--timeout", "2s", addr+"/x")
	if status != 1 || !strings.Contains(errs, addr+"/x: connect: ") || !strings.Contains(errs, "connection refused") {
		t.Errorf("exit %d, stderr %q", status, errs)
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	s := testrig.NbdServer(t, map[string]string{
		"disk":  testrig.RawImage(t, filepath.Join(dir, "disk.img"), 4<<20),
		"other": testrig.RawImage(t, filepath.Join(dir, "other.img"), 2<<20),
	})
	for _, spec := range []string{s.Addr, "nbd://" + s.Addr, s.Addr + "/ignored"} {
		status, out, _ := nbdroot(t, "list", spec)
		if status != 0 {
			t.Errorf("list %s: exit %d", spec, status)
			continue
		}
		// nbd-server has no structured replies and no metadata
		// contexts: listed all the same.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "  META CONTEXTS  ") ||
			!strings.HasPrefix(lines[1], "disk ") || !strings.HasPrefix(lines[2], "other ") ||
			!strings.Contains(lines[1], "  none") || lines[3] != "structured replies: no" {
			t.Errorf("list %s:\n%s", spec, out)
		}
	}

	status, out, _ := nbdroot(t, "list", "--json", s.Addr)
	if status != 0 {
		t.Fatalf("--json: exit %d", status)
	}
	var got []exportInfo
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if len(got) != 2 || got[0].Name != "disk" || got[1].Name != "other" {
		t.Errorf("--json exports = %+v", got)
	}
	for _, e := range got {
		if e.StructuredReplies == nil || *e.StructuredReplies || e.MetaContexts == nil || len(*e.MetaContexts) != 0 {
			t.Errorf("--json: %q: structured_replies %v, meta_contexts %v; want false and []", e.Name, e.StructuredReplies, e.MetaContexts)
		}
	}
}

// TestListMetaContexts lists qemu-nbd, which offers structured replies and
// base:allocation, as qemu-nbd --list shows them.
func TestListMetaContexts(t *testing.T) {
	dir := t.TempDir()
	s := testrig.QemuNBD(t, testrig.RawImage(t, filepath.Join(dir, "disk.img"), 1<<20), "disk")
	status, out, _ := nbdroot(t, "list", s.Addr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if status != 0 || len(lines) != 3 || !strings.HasPrefix(lines[1], "disk ") ||
		!strings.Contains(lines[1], ",SEND_DF,") || !strings.Contains(lines[1], "  base:allocation") ||
		lines[2] != "structured replies: yes" {
		t.Errorf("exit %d:\n%s", status, out)
	}
	status, out, _ = nbdroot(t, "list", "--json", s.Addr)
	var got []map[string]any
	if err := json.Unmarshal([]byte(out), &got); status != 0 || err != nil || len(got) != 1 {
		t.Fatalf("--json: exit %d, %v:\n%s", status, err, out)
	}
	if got[0]["structured_replies"] != true || fmt.Sprint(got[0]["meta_contexts"]) != "[base:allocation]" {
		t.Errorf("--json: structured_replies %v, meta_contexts %v", got[0]["structured_replies"], got[0]["meta_contexts"])
	}
	// probe's JSON has neither: its handshake is the kernel's.
	_, out, _ = nbdroot(t, "probe", "--json", s.Addr+"/disk")
	if strings.Contains(out, "structured_replies") || strings.Contains(out, "meta_contexts") {
		t.Errorf("probe --json:\n%s", out)
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0 B", 512: "512 B", 1024: "1 KiB", 1536: "1.5 KiB", 64 << 20: "64 MiB",
		1000000: "976.6 KiB", 3 << 40: "3 TiB", 1<<64 - 1: "16 EiB",
	} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestProbeServers runs `nbdroot probe` against each server setup boot
// supports, with the TLS flags an administrator would give.
func TestProbeServers(t *testing.T) {
	dir := t.TempDir()
	cs := testrig.Certs(t, filepath.Join(dir, "pki"))
	img := testrig.RawImage(t, filepath.Join(dir, "disk.img"), 4<<20)
	tlsFlags := []string{"--ca", cs.CA, "--cert", cs.ClientCert, "--key", cs.ClientKey}
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *testrig.Server
		path  string // SPEC after the address
		tls   bool
		want  []string
	}{
		{"qemu-nbd", func(t *testing.T) *testrig.Server { return testrig.QemuNBD(t, img, "disk") },
			"/disk", false, []string{"size:        4194304 (4 MiB)", "path:        go", "tls:         off"}},
		{"nbdkit", func(t *testing.T) *testrig.Server { return testrig.Nbdkit(t, "memory", "64M") },
			"", false, []string{"size:        67108864 (64 MiB)", "path:        go"}},
		{"nbdkit-oldstyle", func(t *testing.T) *testrig.Server { return testrig.Nbdkit(t, "--oldstyle", "memory", "64M") },
			"", false, []string{"size:        67108864 (64 MiB)", "path:        oldstyle"}},
		{"nbd-server", func(t *testing.T) *testrig.Server {
			return testrig.NbdServer(t, map[string]string{"disk": img})
		}, "/disk", false, []string{"size:        4194304 (4 MiB)", "path:        go"}},
		{"nbdkit-tls", func(t *testing.T) *testrig.Server {
			return testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "memory", "64M")
		}, "", true, []string{"size:        67108864 (64 MiB)"}},
		{"nbdkit-tls-verify-peer", func(t *testing.T) *testrig.Server {
			return testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+cs.Dir, "--tls-verify-peer", "memory", "64M")
		}, "", true, []string{"size:        67108864 (64 MiB)"}},
		{"qemu-nbd-tls", func(t *testing.T) *testrig.Server {
			return testrig.QemuNBD(t, img, "disk", testrig.TLS(cs.Dir))
		}, "/disk", true, []string{"size:        4194304 (4 MiB)"}},
		{"nbd-server-tls", func(t *testing.T) *testrig.Server {
			return testrig.NbdServer(t, map[string]string{"disk": img}, testrig.TLS(cs.Dir))
		}, "/disk", true, []string{"size:        4194304 (4 MiB)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.start(t)
			args := []string{"probe"}
			if tc.tls {
				args = append(args, tlsFlags...)
				tc.want = append(tc.want, "path:        go", "tls:         TLS 1.")
			}
			status, out, errs := nbdroot(t, append(args, s.Addr+tc.path)...)
			if status != 0 {
				t.Fatalf("exit %d: %s", status, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
