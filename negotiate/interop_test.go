package negotiate_test

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/negotiate"
)

// The interop tests run nbdroot's handshake, through dial.Dial exactly as
// boot and `nbdroot probe` run it, against real servers on 127.0.0.1:
// qemu-nbd, nbdkit and nbd-server, in plain text and with TLS.

// interopSpec is a spec reaching addr's export, with TLS when tlsCfg is set.
func interopSpec(t testing.TB, addr, export string, tlsCfg *config.TLS) (config.Spec, config.Endpoint) {
	t.Helper()
	spec, err := config.ParseTarget(addr + "/" + export)
	if err != nil {
		t.Fatal(err)
	}
	spec.Server.ConnectTimeout, spec.Server.HandshakeTimeout = 5*time.Second, 10*time.Second
	ep := spec.Server.Endpoints[0]
	if tlsCfg != nil {
		spec.TLS = *tlsCfg
	}
	return spec, ep
}

// rig is the files the servers serve.
type rig struct {
	certs config.TLS // the right CA and client certificate, verifying
	cs    testrig.CertSet
	img   string // a 4 MiB raw image
	img2  string // a 2 MiB raw image
}

func newRig(t *testing.T) rig {
	t.Helper()
	dir := t.TempDir()
	cs := testrig.Certs(t, filepath.Join(dir, "pki"))
	return rig{
		cs:    cs,
		certs: config.TLS{Enabled: true, CAFile: cs.CA, CertFile: cs.ClientCert, KeyFile: cs.ClientKey, VerifyPeer: true},
		img:   testrig.RawImage(t, filepath.Join(dir, "disk.img"), 4<<20),
		img2:  testrig.RawImage(t, filepath.Join(dir, "disk2.img"), 2<<20),
	}
}

// interopCase is one server setup and what the handshake must report.
type interopCase struct {
	name      string
	start     func(t *testing.T, r rig) *testrig.Server
	export    string
	tls       bool // connect with r.certs
	size      uint64
	path      negotiate.Path
	flags     negotiate.Flags // must all be set
	notFlags  negotiate.Flags // must all be clear
	blockSize bool            // the server advertises block sizes
}

// interopCases are the eight server setups nbdroot must boot from.
func interopCases() []interopCase {
	const mem = 64 << 20
	return []interopCase{
		{
			name:  "qemu-nbd",
			start: func(t *testing.T, r rig) *testrig.Server { return testrig.QemuNBD(t, r.img, "disk", testrig.Shared(4)) },
			// With --shared=4 qemu-nbd allows multi-conn.
			export: "disk", size: 4 << 20, path: negotiate.PathGo,
			flags: negotiate.FlagHasFlags | negotiate.FlagSendFlush | negotiate.FlagSendFUA |
				negotiate.FlagSendTrim | negotiate.FlagSendWriteZeroes | negotiate.FlagCanMultiConn,
			notFlags: negotiate.FlagReadOnly, blockSize: true,
		},
		{
			name:   "nbdkit",
			start:  func(t *testing.T, r rig) *testrig.Server { return testrig.Nbdkit(t, "memory", "64M") },
			export: "", size: mem, path: negotiate.PathGo,
			// nbdkit 1.32's memory plugin sends no NBD_INFO_BLOCK_SIZE.
			flags: negotiate.FlagHasFlags | negotiate.FlagSendFlush | negotiate.FlagSendFUA |
				negotiate.FlagSendTrim | negotiate.FlagSendWriteZeroes | negotiate.FlagCanMultiConn,
			notFlags: negotiate.FlagReadOnly,
		},
		{
			name:   "nbdkit-oldstyle",
			start:  func(t *testing.T, r rig) *testrig.Server { return testrig.Nbdkit(t, "--oldstyle", "memory", "64M") },
			export: "", size: mem, path: negotiate.PathOldstyle,
			flags:    negotiate.FlagHasFlags | negotiate.FlagSendFlush | negotiate.FlagCanMultiConn,
			notFlags: negotiate.FlagReadOnly,
		},
		{
			name: "nbd-server",
			start: func(t *testing.T, r rig) *testrig.Server {
				return testrig.NbdServer(t, map[string]string{"disk": r.img, "other": r.img2})
			},
			// nbd-server sends SEND_FLUSH and SEND_FUA only with flush =
			// true and fua = true, and no block sizes.
			export: "disk", size: 4 << 20, path: negotiate.PathGo,
			flags:    negotiate.FlagHasFlags | negotiate.FlagSendWriteZeroes | negotiate.FlagCanMultiConn,
			notFlags: negotiate.FlagReadOnly | negotiate.FlagSendFlush,
		},
		{
			name: "nbdkit-tls",
			start: func(t *testing.T, r rig) *testrig.Server {
				return testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+r.cs.Dir, "memory", "64M")
			},
			export: "", tls: true, size: mem, path: negotiate.PathGo,
			flags:    negotiate.FlagHasFlags | negotiate.FlagSendFlush | negotiate.FlagCanMultiConn,
			notFlags: negotiate.FlagReadOnly,
		},
		{
			name: "nbdkit-tls-verify-peer",
			start: func(t *testing.T, r rig) *testrig.Server {
				return testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+r.cs.Dir, "--tls-verify-peer", "-r", "memory", "64M")
			},
			export: "", tls: true, size: mem, path: negotiate.PathGo,
			flags:    negotiate.FlagHasFlags | negotiate.FlagReadOnly,
			notFlags: negotiate.FlagSendTrim | negotiate.FlagSendWriteZeroes | negotiate.FlagSendFUA,
		},
		{
			name: "qemu-nbd-tls",
			start: func(t *testing.T, r rig) *testrig.Server {
				return testrig.QemuNBD(t, r.img, "disk", testrig.TLS(r.cs.Dir), testrig.ReadOnly())
			},
			export: "disk", tls: true, size: 4 << 20, path: negotiate.PathGo,
			flags:    negotiate.FlagHasFlags | negotiate.FlagReadOnly,
			notFlags: negotiate.FlagSendTrim | negotiate.FlagSendWriteZeroes, blockSize: true,
		},
		{
			name: "nbd-server-tls",
			start: func(t *testing.T, r rig) *testrig.Server {
				return testrig.NbdServer(t, map[string]string{"disk": r.img}, testrig.TLS(r.cs.Dir))
			},
			export: "disk", tls: true, size: 4 << 20, path: negotiate.PathGo,
			flags:    negotiate.FlagHasFlags | negotiate.FlagSendWriteZeroes,
			notFlags: negotiate.FlagReadOnly,
		},
	}
}

func TestInteropHandshake(t *testing.T) {
	r := newRig(t)
	for _, tc := range interopCases() {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.start(t, r)
			var tlsCfg *config.TLS
			if tc.tls {
				tlsCfg = &r.certs
			}
			spec, ep := interopSpec(t, s.Addr, tc.export, tlsCfg)
			exp, conn, err := dial.Dial(context.Background(), spec, ep)
			if err != nil {
				t.Fatalf("Dial: %v\n%s", err, s.Output())
			}
			if err := negotiate.Disconnect(conn); err != nil {
				t.Errorf("Disconnect: %v", err)
			}
			t.Logf("%s: %+v flags=%v", tc.name, *exp, exp.Flags)
			if exp.Size != tc.size {
				t.Errorf("size %d, want %d", exp.Size, tc.size)
			}
			if exp.Path != tc.path {
				t.Errorf("path %q, want %q", exp.Path, tc.path)
			}
			if !exp.Flags.Has(tc.flags) {
				t.Errorf("flags %v, want at least %v", exp.Flags, tc.flags)
			}
			if exp.Flags&tc.notFlags != 0 {
				t.Errorf("flags %v, want none of %v", exp.Flags, tc.notFlags)
			}
			if tc.tls {
				if exp.TLSVersion < tls.VersionTLS12 || exp.TLSCipher == 0 {
					t.Errorf("TLS version %#x cipher %#x, want TLS 1.2 or later", exp.TLSVersion, exp.TLSCipher)
				}
			} else if exp.TLSVersion != 0 {
				t.Errorf("TLS version %#x on a plaintext connection", exp.TLSVersion)
			}
			if tc.blockSize {
				if exp.MinBlock == 0 || exp.PrefBlock < exp.MinBlock || exp.MaxBlock < exp.PrefBlock {
					t.Errorf("block sizes min %d preferred %d max %d, want advertised and ordered", exp.MinBlock, exp.PrefBlock, exp.MaxBlock)
				}
			}
		})
	}
}

// wantErr checks that err is non-nil, names the endpoint and contains every
// substring in want.
func wantErr(t *testing.T, err error, ep config.Endpoint, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", want)
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	if !strings.HasPrefix(msg, ep.String()+": ") {
		t.Errorf("error %q does not start with the endpoint %s", msg, ep.String())
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
}

func TestInteropTLSFailures(t *testing.T) {
	r := newRig(t)
	tlsSrv := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+r.cs.Dir, "memory", "1M")
	verifySrv := testrig.Nbdkit(t, "--tls=require", "--tls-certificates="+r.cs.Dir, "--tls-verify-peer", "memory", "1M")
	plainSrv := testrig.Nbdkit(t, "memory", "1M")
	oldSrv := testrig.Nbdkit(t, "--oldstyle", "memory", "1M")

	dial := func(s *testrig.Server, cfg *config.TLS) (config.Endpoint, error) {
		spec, ep := interopSpec(t, s.Addr, "", cfg)
		_, conn, err := dial.Dial(context.Background(), spec, ep)
		if err == nil {
			negotiate.Disconnect(conn)
		}
		return ep, err
	}

	t.Run("wrong CA", func(t *testing.T) {
		cfg := r.certs
		cfg.CAFile = r.cs.WrongCA
		ep, err := dial(tlsSrv, &cfg)
		wantErr(t, err, ep, "certificate signed by unknown authority")
	})
	t.Run("wrong server name", func(t *testing.T) {
		cfg := r.certs
		cfg.ServerName = "nbd.example.com"
		ep, err := dial(tlsSrv, &cfg)
		wantErr(t, err, ep, "certificate is valid for", "not nbd.example.com")
	})
	t.Run("no verify accepts the wrong CA", func(t *testing.T) {
		cfg := r.certs
		cfg.CAFile, cfg.VerifyPeer = r.cs.WrongCA, false
		if _, err := dial(tlsSrv, &cfg); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("TLS against a plaintext-only server", func(t *testing.T) {
		ep, err := dial(plainSrv, &r.certs)
		wantErr(t, err, ep, "server does not support TLS")
		if !errors.Is(err, negotiate.ErrTLSUnsupported) {
			t.Errorf("errors.Is(%v, ErrTLSUnsupported) = false", err)
		}
	})
	t.Run("TLS against oldstyle", func(t *testing.T) {
		ep, err := dial(oldSrv, &r.certs)
		wantErr(t, err, ep, "server does not support TLS")
		if !errors.Is(err, negotiate.ErrTLSUnsupported) {
			t.Errorf("errors.Is(%v, ErrTLSUnsupported) = false", err)
		}
	})
	t.Run("plaintext against TLS required", func(t *testing.T) {
		ep, err := dial(tlsSrv, nil)
		wantErr(t, err, ep, "server requires TLS")
		if !errors.Is(err, negotiate.ErrTLSRequired) {
			t.Errorf("errors.Is(%v, ErrTLSRequired) = false", err)
		}
	})
	t.Run("verify-peer without a client certificate", func(t *testing.T) {
		cfg := r.certs
		cfg.CertFile, cfg.KeyFile = "", ""
		ep, err := dial(verifySrv, &cfg)
		wantErr(t, err, ep)
	})
	t.Run("verify-peer with a client certificate from the wrong CA", func(t *testing.T) {
		cfg := r.certs
		cfg.CertFile, cfg.KeyFile = r.cs.WrongClientCert, r.cs.WrongClientKey
		ep, err := dial(verifySrv, &cfg)
		wantErr(t, err, ep)
	})
}

func TestInteropUnknownExport(t *testing.T) {
	r := newRig(t)
	for _, s := range []*testrig.Server{
		testrig.QemuNBD(t, r.img, "disk"),
		testrig.NbdServer(t, map[string]string{"disk": r.img}),
	} {
		t.Run(s.Kind, func(t *testing.T) {
			spec, ep := interopSpec(t, s.Addr, "nosuch", nil)
			_, _, err := dial.Dial(context.Background(), spec, ep)
			wantErr(t, err, ep, "nosuch")
			if !errors.Is(err, negotiate.ErrExportNotFound) {
				t.Errorf("errors.Is(%v, ErrExportNotFound) = false", err)
			}
			var oe *negotiate.OptionError
			if !errors.As(err, &oe) {
				t.Errorf("%v is not an OptionError", err)
			}
		})
	}
}

func TestInteropList(t *testing.T) {
	r := newRig(t)
	type want struct {
		name string
		size uint64
	}
	// nbd-server before 3.26 opens an export's file only on NBD_OPT_GO, so
	// its NBD_OPT_INFO reply gives size 0 (fixed upstream in 2024 by
	// probing the file on INFO).
	sizeOrZero := func(got, want uint64) bool { return got == want || got == 0 }
	// structured: the server offers structured replies, and lists
	// base:allocation for every export; nbd-server has neither, and is
	// listed all the same.
	for _, tc := range []struct {
		name       string
		start      func(t *testing.T) *testrig.Server
		tls        bool
		structured bool
		want       []want
	}{
		{"qemu-nbd", func(t *testing.T) *testrig.Server {
			// qemu-nbd serves one export; -D gives it a description.
			return testrig.QemuNBD(t, r.img, "disk", testrig.Args("-D", "the root disk"))
		}, false, true, []want{{"disk", 4 << 20}}},
		{"qemu-nbd-tls", func(t *testing.T) *testrig.Server {
			return testrig.QemuNBD(t, r.img, "disk", testrig.TLS(r.cs.Dir))
		}, true, true, []want{{"disk", 4 << 20}}},
		{"nbdkit", func(t *testing.T) *testrig.Server {
			return testrig.Nbdkit(t, "memory", "1M")
		}, false, true, []want{{"", 1 << 20}}},
		{"nbd-server", func(t *testing.T) *testrig.Server {
			return testrig.NbdServer(t, map[string]string{"disk": r.img, "other": r.img2})
		}, false, false, []want{{"disk", 4 << 20}, {"other", 2 << 20}}},
		{"nbd-server-tls", func(t *testing.T) *testrig.Server {
			return testrig.NbdServer(t, map[string]string{"disk": r.img, "other": r.img2}, testrig.TLS(r.cs.Dir))
		}, true, false, []want{{"disk", 4 << 20}, {"other", 2 << 20}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.start(t)
			var cfg *config.TLS
			if tc.tls {
				cfg = &r.certs
			}
			spec, ep := interopSpec(t, s.Addr, "", cfg)
			exps, err := mustDialer(t, spec).List(context.Background(), ep)
			if err != nil {
				t.Fatalf("DialList: %v\n%s", err, s.Output())
			}
			var got []want
			for _, e := range exps {
				got = append(got, want{e.Name, e.Size})
				t.Logf("%+v", e)
			}
			slices.SortFunc(got, func(a, b want) int { return strings.Compare(a.name, b.name) })
			if !slices.EqualFunc(got, tc.want, func(g, w want) bool {
				if strings.HasPrefix(tc.name, "nbd-server") {
					return g.name == w.name && sizeOrZero(g.size, w.size)
				}
				return g == w
			}) {
				t.Errorf("exports %v, want %v", got, tc.want)
			}
			if tc.name == "qemu-nbd" && len(exps) == 1 && exps[0].Description != "the root disk" {
				t.Errorf("description %q, want %q", exps[0].Description, "the root disk")
			}
			for _, e := range exps {
				if e.StructuredReplies != tc.structured {
					t.Errorf("%q: structured replies %v, want %v", e.Name, e.StructuredReplies, tc.structured)
				}
				hasBase := slices.Contains(e.MetaContexts, negotiate.ContextBaseAllocation)
				if hasBase != tc.structured || (!tc.structured && e.MetaContexts != nil) {
					t.Errorf("%q: meta contexts %q", e.Name, e.MetaContexts)
				}
				// As qemu-nbd --list shows: DF comes with structured
				// replies, and only with them.
				if strings.HasPrefix(tc.name, "qemu-nbd") && !e.Flags.Has(negotiate.FlagSendDF) {
					t.Errorf("%q: flags %v without SEND_DF", e.Name, e.Flags)
				}
				if !tc.structured && e.Flags.Has(negotiate.FlagSendDF) {
					t.Errorf("%q: flags %v with SEND_DF but no structured replies", e.Name, e.Flags)
				}
			}
		})
	}
}

// TestInteropQuery maps sparse images through a query session (dial's
// Query, as probe --map opens it) against qemu-nbd, plain and with TLS, and
// compares the map with what qemu-img map says of the same image; against
// nbd-server, which has no structured replies, it must fail clearly.
// cmd/nbdroot's TestProbeMapInterop does the same through the command.
func TestInteropQuery(t *testing.T) {
	r := newRig(t)
	dir := t.TempDir()
	writes := []testrig.Write{
		{Offset: 1 << 20, Length: 64 << 10, Pattern: 0xab},
		{Offset: 10 << 20, Length: 2 << 20, Pattern: 0xcd},
		{Offset: 20 << 20, Length: 1 << 20, Zero: true},
		{Offset: 64<<20 - 4096, Length: 4096, Pattern: 1},
	}
	raw := testrig.SparseImage(t, filepath.Join(dir, "sparse.raw"), "raw", 64<<20, writes...)
	qcow := testrig.SparseImage(t, filepath.Join(dir, "sparse.qcow2"), "qcow2", 64<<20, writes...)
	for _, tc := range []struct {
		name, img, format string
		tls               bool
	}{
		{"qemu-nbd raw", raw, "raw", false},
		{"qemu-nbd qcow2", qcow, "qcow2", false},
		{"qemu-nbd-tls qcow2", qcow, "qcow2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := testrig.Allocations(testrig.QemuImgMap(t, "-f", tc.format, tc.img))
			opts := []testrig.Option{testrig.Format(tc.format), testrig.ReadOnly()}
			var cfg *config.TLS
			if tc.tls {
				opts, cfg = append(opts, testrig.TLS(r.cs.Dir)), &r.certs
			}
			s := testrig.QemuNBD(t, tc.img, "disk", opts...)
			spec, ep := interopSpec(t, s.Addr, "disk", cfg)
			q, err := mustDialer(t, spec).Query(context.Background(), ep, negotiate.ContextBaseAllocation)
			if err != nil {
				t.Fatalf("Query: %v\n%s", err, s.Output())
			}
			exp := q.Export()
			var got []testrig.Allocation
			err = q.Map(context.Background(), 0, exp.Size, func(e negotiate.Extent) error {
				got = append(got, testrig.Allocation{Offset: e.Offset, Length: e.Length, Flags: e.Flags})
				return nil
			})
			if cerr := q.Close(); cerr != nil {
				t.Errorf("Close: %v", cerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			got = testrig.MergeAllocations(got)
			t.Logf("%s: %v", tc.name, got)
			if !slices.Equal(got, want) {
				t.Errorf("map\n got %v\nwant %v (qemu-img map)", got, want)
			}
			if tc.tls && exp.TLSVersion < tls.VersionTLS12 {
				t.Errorf("TLS version %#x", exp.TLSVersion)
			}
		})
	}

	t.Run("nbd-server", func(t *testing.T) {
		s := testrig.NbdServer(t, map[string]string{"disk": raw})
		spec, ep := interopSpec(t, s.Addr, "disk", nil)
		_, err := mustDialer(t, spec).Query(context.Background(), ep, negotiate.ContextBaseAllocation)
		wantErr(t, err, ep, "negotiate: NBD_OPT_STRUCTURED_REPLY: server does not support structured replies", "NBD_REP_ERR_UNSUP")
		var oe *negotiate.OptionError
		if !errors.Is(err, negotiate.ErrNoStructuredReplies) || !errors.As(err, &oe) || oe.Code != negotiate.RepErrUnsup {
			t.Errorf("error %v: want ErrNoStructuredReplies and NBD_REP_ERR_UNSUP", err)
		}
	})

	t.Run("unknown context", func(t *testing.T) {
		s := testrig.QemuNBD(t, raw, "disk", testrig.ReadOnly())
		spec, ep := interopSpec(t, s.Addr, "disk", nil)
		_, err := mustDialer(t, spec).Query(context.Background(), ep, "qemu:dirty-bitmap:nosuch")
		wantErr(t, err, ep, `NBD_OPT_SET_META_CONTEXT "disk": server does not offer metadata context "qemu:dirty-bitmap:nosuch"`)
		if !errors.Is(err, negotiate.ErrNoMetaContext) {
			t.Errorf("errors.Is(%v, ErrNoMetaContext) = false", err)
		}
	})
}

// mustDialer returns a dial.Dialer for spec or fails the test.
func mustDialer(t *testing.T, spec config.Spec) *dial.Dialer {
	t.Helper()
	d, err := dial.NewDialer(spec)
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	return d
}
