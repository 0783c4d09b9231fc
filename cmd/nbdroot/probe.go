package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/dial"
	"github.com/nbdroot/nbdroot/negotiate"
)

// clientSynopsis is the synopsis of the flags probe, list and attach share.
const clientSynopsis = "[--tls] [--ca FILE] [--cert FILE --key FILE] [--tls-hostname NAME] [--no-verify] [--timeout DUR] [--json]"

// tlsDoc is what the help of probe, list and attach says about their flags.
const tlsDoc = "Any TLS flag turns TLS on, as nbds:// does; TLS is then required, never a\nplaintext fallback. Flags go before SPEC."

// clientFlags are the flags probe, list and attach share.
type clientFlags struct {
	tls, noVerify, json     bool
	ca, cert, key, hostname string
	timeout                 time.Duration
}

// register defines the flags on fs.
func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.tls, "tls", false, "require TLS (implied by nbds:// and by the other TLS flags)")
	fs.StringVar(&f.ca, "ca", "", "PEM `FILE` of CA certificates to trust (default: the system's)")
	fs.StringVar(&f.cert, "cert", "", "client certificate PEM `FILE` (with --key)")
	fs.StringVar(&f.key, "key", "", "client private key PEM `FILE` (with --cert)")
	fs.StringVar(&f.hostname, "tls-hostname", "", "`NAME` the server certificate must carry (default: the host in SPEC)")
	fs.BoolVar(&f.noVerify, "no-verify", false, "do not check the server certificate")
	fs.DurationVar(&f.timeout, "timeout", 0, "bound the TCP connect and, separately, the handshake, to `DUR` (default: the spec's defaults)")
	fs.BoolVar(&f.json, "json", false, "print JSON")
}

// errNoSpec is the usage error of probe, list and attach without a SPEC.
var errNoSpec = usagef("want exactly one SPEC (HOST[:PORT]/NAME or an nbd:// URI), got none")

// onlyTarget is target of the one SPEC argument of probe and list: args,
// the arguments after the flags, must be one SPEC.
func (f *clientFlags) onlyTarget(args []string) (config.Spec, config.Endpoint, error) {
	switch len(args) {
	case 0:
		return config.Spec{}, config.Endpoint{}, errNoSpec
	case 1:
		return f.target(args[0])
	}
	return config.Spec{}, config.Endpoint{}, usagef("want exactly one SPEC, got %d arguments", len(args))
}

// target returns the spec of one server, SPEC with the flags applied, and
// its endpoint. HOST[:PORT] without a name is the default export (probe,
// attach) or just the server (list, which ignores the name).
func (f *clientFlags) target(arg string) (config.Spec, config.Endpoint, error) {
	spec, err := config.ParseTarget(arg)
	switch {
	case f.timeout < 0:
		err = usagef("--timeout %v is negative", f.timeout)
	case (f.cert == "") != (f.key == ""):
		err = usagef("--cert and --key go together")
	case err != nil:
		err = usageError{err}
	case len(spec.Server.Endpoints) != 1:
		err = usagef("%q names %d servers, want one", arg, len(spec.Server.Endpoints))
	}
	if err != nil {
		return config.Spec{}, config.Endpoint{}, err
	}
	t := &spec.TLS
	t.Enabled = t.Enabled || f.tls || f.ca != "" || f.cert != "" || f.key != "" || f.hostname != "" || f.noVerify
	t.CAFile = cmp.Or(f.ca, t.CAFile)
	t.CertFile, t.KeyFile = cmp.Or(f.cert, t.CertFile), cmp.Or(f.key, t.KeyFile) // given together
	t.ServerName = cmp.Or(f.hostname, t.ServerName)
	t.VerifyPeer = t.VerifyPeer && !f.noVerify
	spec.Server.ConnectTimeout = cmp.Or(f.timeout, spec.Server.ConnectTimeout) // not negative, checked above
	spec.Server.HandshakeTimeout = cmp.Or(f.timeout, spec.Server.HandshakeTimeout)
	return spec, spec.Server.Endpoints[0], nil
}

// probeFlags registers probe's flags. probe negotiates with the server
// exactly as the keeper does (dial.Dial), describes the export, and
// disconnects; with --map it prints the allocation map instead, from a
// query session (probemap.go).
func probeFlags(fs *flag.FlagSet) runFunc {
	var f clientFlags
	f.register(fs)
	mapOn := fs.Bool("map", false, "print the allocation map (NBD_CMD_BLOCK_STATUS) instead of describing the export")
	metaContext := fs.String("context", negotiate.ContextBaseAllocation, "the metadata context `NAME` to map (list shows those a server offers)")
	totals := fs.Bool("totals", false, "print bytes and percentage per extent type instead of the extents")
	return func(ctx context.Context, sio stdio, args []string) error {
		spec, ep, err := f.onlyTarget(args)
		if err != nil {
			return err
		}
		if *mapOn || *totals || flagGiven(fs, "context") {
			return probeMap(ctx, sio, spec, ep, *metaContext, f.json, *totals)
		}
		exp, conn, err := dial.Dial(ctx, spec, ep)
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		// The probe has its answer; a failed NBD_CMD_DISC only means the
		// server hung up first.
		_ = negotiate.Disconnect(conn)

		info := describe(*exp)
		info.Server = ep.Server()
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
		tlsDesc := "off"
		if info.TLS {
			tlsDesc = info.TLSVersion + ", " + info.TLSCipher
		}
		w.printf("tls:         %s\n", tlsDesc)
		return w.err
	}
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
	// List only: probe's handshake is the kernel's and never asks.
	StructuredReplies *bool     `json:"structured_replies,omitempty"`
	MetaContexts      *[]string `json:"meta_contexts,omitempty"`
}

func describe(e negotiate.Export) exportInfo {
	info := exportInfo{
		Name:               e.Name,
		Description:        e.Description,
		Size:               e.Size,
		SizeHuman:          humanSize(e.Size),
		Flags:              []string{},
		FlagBits:           uint16(e.Flags),
		MinBlockSize:       e.MinBlock,
		PreferredBlockSize: e.PrefBlock,
		MaxBlockSize:       e.MaxBlock,
		Path:               string(e.Path),
		TLS:                e.TLSVersion != 0,
	}
	if e.Flags != 0 {
		info.Flags = strings.Split(e.Flags.String(), ",")
	}
	if info.TLS {
		info.TLSVersion = tls.VersionName(e.TLSVersion)
		info.TLSCipher = tls.CipherSuiteName(e.TLSCipher)
	}
	return info
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
	s := strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0")
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
