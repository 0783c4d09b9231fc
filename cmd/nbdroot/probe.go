package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/negotiate"
)

// clientFlags are the flags probe and list share.
type clientFlags struct {
	spec config.Spec
	ep   config.Endpoint
	json bool
	rest []string // arguments after SPEC
}

// parseClientFlags parses `[TLS flags] [--timeout DUR] [--json] SPEC` for
// probe and list, and returns the spec they describe. It returns
// flag.ErrHelp after printing the usage for -h. Any TLS flag turns TLS on,
// as nbds:// does; TLS is then required, never a downgrade. Flags go before
// SPEC.
//
// more registers a command's own flags; the arguments after SPEC are
// returned in rest.
func parseClientFlags(name string, sio stdio, args []string, more func(*flag.FlagSet)) (clientFlags, error) {
	// Parse quietly: a bad flag becomes main's one-line error, and -h prints
	// the usage on stdout.
	fs := flag.NewFlagSet("nbdroot "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		useTLS   = fs.Bool("tls", false, "require TLS (implied by nbds:// and by the other TLS flags)")
		ca       = fs.String("ca", "", "PEM `FILE` of CA certificates to trust (default: the system's)")
		cert     = fs.String("cert", "", "client certificate PEM `FILE` (with --key)")
		key      = fs.String("key", "", "client private key PEM `FILE` (with --cert)")
		hostname = fs.String("tls-hostname", "", "`NAME` the server certificate must carry (default: the host in SPEC)")
		noVerify = fs.Bool("no-verify", false, "do not check the server certificate")
		timeout  = fs.Duration("timeout", 0, "bound the TCP connect and, separately, the handshake (default: the spec's defaults)")
		asJSON   = fs.Bool("json", false, "print JSON")
	)
	if more != nil {
		more(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(sio.out, "usage: nbdroot %s [TLS flags] [--timeout DUR] [--json] SPEC\n\n", name)
			fmt.Fprintln(sio.out, "SPEC is HOST[:PORT][/NAME], [V6]:PORT/NAME, nbd://HOST[:PORT]/NAME, nbds://... (TLS) or nbd+unix:///NAME?socket=PATH.")
			fmt.Fprintln(sio.out, "Any TLS flag turns TLS on; TLS is then required.")
			fmt.Fprintln(sio.out)
			fs.SetOutput(sio.out)
			fs.PrintDefaults()
			return clientFlags{}, flag.ErrHelp
		}
		return clientFlags{}, usagef("%s: %v (try 'nbdroot %s -h')", name, err, name)
	}
	if fs.NArg() < 1 {
		return clientFlags{}, usagef("%s: want exactly one SPEC (HOST[:PORT]/NAME or an nbd:// URI), got none", name)
	}
	if *timeout < 0 {
		return clientFlags{}, usagef("%s: --timeout %v is negative", name, *timeout)
	}
	target := fs.Arg(0)
	// HOST[:PORT] without a name is the default export (probe) or just
	// the server (list, which ignores the name).
	spec, err := config.ParseTarget(target)
	if err != nil {
		return clientFlags{}, err
	}
	if len(spec.Server.Endpoints) != 1 {
		return clientFlags{}, usagef("%s: %q names %d servers, want one", name, target, len(spec.Server.Endpoints))
	}
	ep := spec.Server.Endpoints[0]

	t := &spec.TLS
	if *useTLS || *ca != "" || *cert != "" || *key != "" || *hostname != "" || *noVerify {
		t.Enabled = true
	}
	if (*cert == "") != (*key == "") {
		return clientFlags{}, usagef("%s: --cert and --key go together", name)
	}
	if *ca != "" {
		t.CAFile = *ca
	}
	if *cert != "" {
		t.CertFile, t.KeyFile = *cert, *key
	}
	if *hostname != "" {
		t.ServerName = *hostname
	}
	if *noVerify {
		t.VerifyPeer = false
	}
	if *timeout > 0 {
		spec.Server.ConnectTimeout = *timeout
		spec.Server.HandshakeTimeout = *timeout
	}
	return clientFlags{spec: spec, ep: ep, json: *asJSON, rest: fs.Args()[1:]}, nil
}

// runProbe implements `nbdroot probe`: negotiate with the server exactly as
// the keeper does (dial.Dial), describe the export, and disconnect.
func runProbe(ctx context.Context, sio stdio, args []string) error {
	f, err := parseClientFlags("probe", sio, args, nil)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(f.rest) > 0 {
		return usagef("probe: want exactly one SPEC, got %d arguments", 1+len(f.rest))
	}
	exp, conn, err := dial.Dial(ctx, f.spec, f.ep)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	// The probe has its answer; a failed NBD_CMD_DISC only means the server
	// hung up first.
	_ = negotiate.Disconnect(conn)

	info := describe(*exp)
	info.Server = f.ep.Server()
	if f.json {
		return writeJSON(sio.out, info)
	}
	w := &errWriter{w: sio.out}
	w.printf("server:      %s\n", info.Server)
	w.printf("export:      %s\n", displayName(exp.Name))
	if exp.Description != "" {
		w.printf("description: %s\n", exp.Description)
	}
	w.printf("size:        %d (%s)\n", exp.Size, humanSize(exp.Size))
	w.printf("flags:       %s\n", flagsString(exp.Flags))
	w.printf("block sizes: %s\n", blockSizes(*exp))
	w.printf("path:        %s\n", exp.Path)
	w.printf("tls:         %s\n", tlsString(*exp))
	return w.err
}

// exportInfo is an export as probe --json and list --json print it. The field
// names are a stable interface.
type exportInfo struct {
	Server             string   `json:"server,omitempty"`
	Name               string   `json:"name"`
	Description        string   `json:"description"`
	Size               uint64   `json:"size"`
	SizeHuman          string   `json:"size_human"`
	Flags              []string `json:"flags"`
	FlagBits           uint16   `json:"flag_bits"`
	MinBlockSize       uint32   `json:"min_block_size"`
	PreferredBlockSize uint32   `json:"preferred_block_size"`
	MaxBlockSize       uint32   `json:"max_block_size"`
	Path               string   `json:"path"`
	TLS                bool     `json:"tls"`
	TLSVersion         string   `json:"tls_version,omitempty"`
	TLSCipher          string   `json:"tls_cipher,omitempty"`
}

func describe(e negotiate.Export) exportInfo {
	info := exportInfo{
		Name:               e.Name,
		Description:        e.Description,
		Size:               e.Size,
		SizeHuman:          humanSize(e.Size),
		Flags:              flagNames(e.Flags),
		FlagBits:           uint16(e.Flags),
		MinBlockSize:       e.MinBlock,
		PreferredBlockSize: e.PrefBlock,
		MaxBlockSize:       e.MaxBlock,
		Path:               string(e.Path),
		TLS:                e.TLSVersion != 0,
	}
	if info.TLS {
		info.TLSVersion = tls.VersionName(e.TLSVersion)
		info.TLSCipher = tls.CipherSuiteName(e.TLSCipher)
	}
	return info
}

func flagNames(f negotiate.Flags) []string {
	names := []string{}
	if f != 0 {
		names = strings.Split(f.String(), ",")
	}
	return names
}

func flagsString(f negotiate.Flags) string {
	if f == 0 {
		return "none"
	}
	return f.String()
}

// blockSizes formats the block size constraints: "min 1, preferred 4096,
// max 33554432", with "not advertised" for what the server did not send.
func blockSizes(e negotiate.Export) string {
	if e.MinBlock == 0 && e.PrefBlock == 0 && e.MaxBlock == 0 {
		return "not advertised"
	}
	one := func(v uint32) string {
		if v == 0 {
			return "not advertised"
		}
		return strconv.FormatUint(uint64(v), 10)
	}
	return fmt.Sprintf("min %s, preferred %s, max %s", one(e.MinBlock), one(e.PrefBlock), one(e.MaxBlock))
}

func tlsString(e negotiate.Export) string {
	if e.TLSVersion == 0 {
		return "off"
	}
	return tls.VersionName(e.TLSVersion) + ", " + tls.CipherSuiteName(e.TLSCipher)
}

// humanSize formats n bytes in binary units: "64 MiB", "1.5 GiB", "512 B".
func humanSize(n uint64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i:i+1] + "iB"
}

// displayName quotes an export name when it is empty (the default export) or
// holds spaces or unprintable characters.
func displayName(name string) string {
	if name == "" {
		return `"" (default export)`
	}
	for _, r := range name {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) {
			return strconv.Quote(name)
		}
	}
	return name
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing JSON: %w", err)
	}
	return nil
}

// errWriter keeps the first write error, so a run of prints checks once.
type errWriter struct {
	w   io.Writer
	err error
}

func (w *errWriter) printf(format string, a ...any) {
	if w.err == nil {
		_, w.err = fmt.Fprintf(w.w, format, a...)
	}
}
