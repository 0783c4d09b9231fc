package config

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// DefaultConfigPath is the TOML file read when neither a flag nor
// nbdroot.config= names one. It may be absent.
const DefaultConfigPath = "/etc/nbdroot.toml"

// Defaults returns the built-in spec, made of the default tags of Spec's
// fields: the lowest layer of Resolve. It names no server.
func Defaults() Spec {
	var s Spec
	for _, k := range keyIndex() {
		if k.def == "" {
			continue
		}
		if err := s.Set(k.name, k.def); err != nil {
			panic("config: default of " + err.Error())
		}
	}
	return s
}

// Sources are the inputs of Resolve.
type Sources struct {
	// Cmdline is the kernel command line (the contents of /proc/cmdline).
	Cmdline string
	// ConfigPath is a TOML file named by a flag (Source "--config" in
	// errors). Empty means the file named by nbdroot.config= on the command
	// line, else DefaultConfigPath if it exists.
	ConfigPath string
	// ReadFile reads the TOML file: os.ReadFile in production. A missing
	// DefaultConfigPath (errors.Is(err, fs.ErrNotExist)) is fine; a missing
	// named file is an error. nil reads no file: naming one is an error.
	ReadFile func(path string) ([]byte, error)
	// Partial skips the checks that need the whole picture (that some server
	// is named), for validating a file the command line will complete, as
	// mkinitramfs does.
	Partial bool
}

// Resolved is a validated Spec and where each of its values came from.
type Resolved struct {
	Spec Spec
	// Origin maps every TOML key ("device.block_size") to where its value
	// came from: "default", "/etc/nbdroot.toml:12",
	// "cmdline: nbdroot=srv:10809/root", or "implied by tls.ca (…)".
	Origin map[string]string
	// ConfigFile is the TOML file that was read, "" if none.
	ConfigFile string
}

// Resolve merges the built-in defaults, the TOML file and the kernel command
// line, in increasing precedence, into one validated Spec. Every problem
// found is reported: the error is one or more *Error joined with
// errors.Join, in input order.
func Resolve(src Sources) (*Resolved, error) {
	r := newResolver()
	args, initArgs := splitKernel(src.Cmdline)
	path, where, optional := src.ConfigPath, origin{source: "--config", field: strconv.Quote(src.ConfigPath)}, false
	if path == "" {
		path, where, optional = DefaultConfigPath, origin{source: DefaultConfigPath}, true
		for _, a := range args {
			if a.name == "nbdroot.config" {
				path, where, optional = a.val, origin{source: "cmdline", field: a.field()}, false
			}
		}
		if path == "" {
			r.fail(where, "needs a path: nbdroot.config=PATH")
		}
	}
	var configFile string
	if path != "" {
		var data []byte
		err := fs.ErrNotExist
		if src.ReadFile != nil {
			data, err = src.ReadFile(path)
		} else if !optional {
			err = errors.New("no file reader was given")
		}
		switch {
		case err == nil:
			configFile = path
			r.loadFile(path, data)
		case optional && errors.Is(err, fs.ErrNotExist):
		default:
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			r.fail(where, fmt.Sprintf("cannot read %s: %v", path, err))
		}
	}
	r.loadCmdline(args, initArgs)
	r.finish(src.Partial)
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	return &Resolved{Spec: r.spec, Origin: r.origins(), ConfigFile: configFile}, nil
}

// layer is a source of values, in increasing precedence.
type layer int

const (
	layerDefault layer = iota
	layerFile
	layerCmdline
)

// origin says where an assignment came from.
type origin struct {
	layer layer
	// family groups arguments that override each other (the TOML key, the
	// kernel argument's name).
	family string
	source string // Error.Source: "FILE:LINE", "cmdline", "--config"
	field  string // Error.Field: the TOML key, or NAME="VALUE"
	text   string // Resolved.Origin
}

// rec is the latest assignment to a key.
type rec struct {
	origin
	lit string // the value as TOML
}

// resolver accumulates layers into a Spec.
type resolver struct {
	spec    Spec
	recs    map[string]rec
	implied map[string]string
	errs    []error
}

func newResolver() *resolver {
	return &resolver{spec: Defaults(), recs: map[string]rec{}, implied: map[string]string{}}
}

func (r *resolver) fail(o origin, msg string) {
	r.errs = append(r.errs, &Error{Source: o.source, Field: o.field, Msg: msg})
}

// desc names an origin inside a message.
func desc(o origin) string {
	switch o.layer {
	case layerCmdline:
		return o.field
	case layerFile:
		return o.field + " (" + o.source + ")"
	}
	return "the default"
}

// apply stores assignments from one origin. Two families of the same layer
// that set a key to different values contradict each other.
func (r *resolver) apply(as []assign, o origin) {
	for _, a := range as {
		lit := literal(a.val)
		prev, ok := r.recs[a.key]
		if ok && prev.layer == o.layer && a.key == "root.read_only" && dracutFlag(prev.family) && o.family == "ro/rw" {
			ok = false // dracut: ro and rw override root=nbd:'s flags
		}
		if ok && prev.layer == o.layer && a.key == "root.read_only" && prev.family == "ro/rw" && dracutFlag(o.family) {
			continue
		}
		if ok && prev.layer == o.layer && prev.family != o.family && prev.lit != lit {
			r.fail(o, fmt.Sprintf("sets %s = %s, but %s sets %s = %s", a.key, lit, desc(prev.origin), a.key, prev.lit))
			continue
		}
		keyIndex()[a.key].set(&r.spec, a.val)
		r.recs[a.key] = rec{o, lit}
	}
}

// dracutFlag reports whether family is dracut's root=nbd: or netroot=nbd:,
// whose ROOTFLAGS ro and rw yield to bare ro and rw on the command line.
func dracutFlag(family string) bool { return family == "root" || family == "netroot" }

// lineProbe makes the TOML decoder report a key's position.
type lineProbe struct{}

var _ toml.Unmarshaler = lineProbe{}

// UnmarshalTOML fails, so that the decoder returns a ParseError carrying the
// position of the key being decoded.
func (lineProbe) UnmarshalTOML(any) error { return errors.New("line probe") }

// lineOf returns the line of the key whose value is p, or 0.
func lineOf(md *toml.MetaData, p toml.Primitive) int {
	var pe toml.ParseError
	if errors.As(md.PrimitiveDecode(p, lineProbe{}), &pe) {
		return pe.Position.Line
	}
	return 0
}

// loadFile applies a TOML file.
func (r *resolver) loadFile(path string, data []byte) {
	at := func(line int) string {
		if line > 0 {
			return fmt.Sprintf("%s:%d", path, line)
		}
		return path
	}
	var top map[string]toml.Primitive
	md, err := toml.Decode(string(data), &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			r.fail(origin{source: at(pe.Position.Line)}, "TOML syntax: "+pe.Message)
		} else {
			r.fail(origin{source: path}, "TOML: "+err.Error())
		}
		return
	}
	bad := map[string]bool{}
	known := knownKeys()
	for _, k := range md.Keys() {
		if bad[k[0]] || len(k) > 2 && bad[k[0]+"."+k[1]] {
			continue
		}
		name := k.String()
		if len(k) == 1 {
			o := origin{layer: layerFile, source: at(lineOf(&md, top[k[0]])), field: name}
			switch {
			case !slices.Contains(sections(), k[0]):
				bad[k[0]] = true
				r.fail(o, unknownKeyMsg(k[0], "", sections(), known))
			case md.Type(k[0]) != "Hash":
				bad[k[0]] = true
				r.fail(o, fmt.Sprintf("is %s; want a table [%s]", strings.ToLower(md.Type(k[0])), k[0]))
			}
			continue
		}
		var sec map[string]toml.Primitive
		if err := md.PrimitiveDecode(top[k[0]], &sec); err != nil {
			bad[k[0]] = true
			continue
		}
		if len(k) > 2 {
			// A sub-table of a key: find the line of the deepest part.
			p, line := sec[k[1]], 0
			for _, part := range k[2:] {
				var m map[string]toml.Primitive
				if md.PrimitiveDecode(p, &m) != nil {
					break
				}
				p = m[part]
				line = lineOf(&md, p)
			}
			parent := k[0] + "." + k[1]
			bad[parent] = true
			if def, ok := keyIndex()[parent]; ok {
				r.fail(origin{source: at(line), field: parent}, "is a table; want "+def.kind.want())
			} else {
				r.fail(origin{source: at(line), field: parent}, unknownKeyMsg(parent, "", known, nil))
			}
			continue
		}
		p := sec[k[1]]
		o := origin{layer: layerFile, family: name, source: at(lineOf(&md, p)), field: name}
		o.text = o.source
		def, ok := keyIndex()[name]
		if !ok {
			bad[name] = true
			r.fail(o, unknownKeyMsg(name, "", known, nil))
			continue
		}
		var v any
		_ = md.PrimitiveDecode(p, &v) // any TOML value decodes into an any
		v, err := fromTOML(def.kind, v)
		var as []assign
		if err == nil {
			as, err = def.assigns(v)
		}
		if err != nil {
			bad[name] = true
			r.fail(o, err.Error())
			continue
		}
		r.apply(as, o)
	}
}

// unknownKeyMsg says a key is unknown and suggests the nearest known one,
// written after prefix. leaves, when given, are full keys whose last part
// may match name.
func unknownKeyMsg(name, prefix string, known, leaves []string) string {
	if s := suggest(name, known); s != "" {
		return "unknown key (did you mean " + prefix + s + "?)"
	}
	for _, l := range leaves {
		if sec, leaf, _ := strings.Cut(l, "."); leaf == name {
			return fmt.Sprintf("unknown key (%s belongs in [%s])", name, sec)
		}
	}
	return "unknown key"
}

// loadCmdline applies the kernel command line. Only nbdroot's own arguments
// are read; everything else is the kernel's or the init's business.
func (r *resolver) loadCmdline(args, initArgs []karg) {
	last := map[string]int{}
	for i, a := range args {
		if f, _ := cmdRule(a); f != "" {
			last[f] = i
		}
	}
	for i, a := range args {
		f, parse := cmdRule(a)
		if f == "" || last[f] != i || f == "nbdroot.config" {
			continue
		}
		o := origin{layer: layerCmdline, family: f, source: "cmdline", field: a.field(), text: "cmdline: " + a.text()}
		if !utf8.ValidString(a.val) {
			r.fail(o, "value is not valid UTF-8")
			continue
		}
		var b batch
		parse(&b)
		as, err := b.result()
		if err != nil {
			r.fail(o, err.Error())
			continue
		}
		r.apply(as, o)
	}
	if len(initArgs) == 0 {
		return
	}
	var words, texts []string
	for _, a := range initArgs {
		words = append(words, a.joined())
		texts = append(texts, a.text())
	}
	o := origin{layer: layerCmdline, family: "--", source: "cmdline", field: "--",
		text: "cmdline: -- " + strings.Join(texts, " ")}
	if i := slices.IndexFunc(words, func(w string) bool { return !utf8.ValidString(w) }); i >= 0 {
		r.fail(o, fmt.Sprintf("init argument %d is not valid UTF-8", i+1))
		return
	}
	r.apply([]assign{{"root.init_args", words}}, o)
}

// errAt reports a problem with key's final value at the origin of that value.
func (r *resolver) errAt(key, msg string) {
	o, ok := r.recs[key]
	if !ok {
		o.origin = origin{source: "default", field: key}
	}
	r.fail(o.origin, msg)
}

// originText says where key's final value came from.
func (r *resolver) originText(key string) string {
	if o, ok := r.recs[key]; ok {
		return o.text
	}
	if t, ok := r.implied[key]; ok {
		return t
	}
	return "default"
}

func (r *resolver) origins() map[string]string {
	m := map[string]string{}
	for _, k := range keyTable() {
		m[k.name] = r.originText(k.name)
	}
	return m
}

// finish applies implications and checks what no single key can: values
// that contradict each other, and completeness unless partial.
func (r *resolver) finish(partial bool) {
	s := &r.spec
	t := &s.TLS
	req, reqSet := r.recs["tls.required"]
	for _, f := range []struct{ key, val string }{{"tls.ca", t.CAFile}, {"tls.cert", t.CertFile}, {"tls.key", t.KeyFile}} {
		switch {
		case f.val == "" || t.Enabled:
		case reqSet:
			r.errAt(f.key, fmt.Sprintf("%s = %s needs TLS, but %s sets tls.required = false", f.key, tomlQuote(f.val), desc(req.origin)))
		default:
			t.Enabled = true
			r.implied["tls.required"] = fmt.Sprintf("implied by %s (%s)", f.key, r.originText(f.key))
		}
	}
	if t.CertFile != "" && t.KeyFile == "" {
		r.errAt("tls.cert", "tls.cert needs tls.key (the client certificate's private key)")
	}
	if t.KeyFile != "" && t.CertFile == "" {
		r.errAt("tls.key", "tls.key needs tls.cert (the client certificate)")
	}
	if s.Device.ReadOnly && !s.Root.ReadOnly && s.Root.Overlay == OverlayNone {
		r.errAt("root.read_only", fmt.Sprintf("the root is to be mounted read-write, but device.read_only = true (%s) and root.overlay = \"none\": mount the root ro, or set root.overlay = \"tmpfs\"",
			r.originText("device.read_only")))
	}
	if s.Network.Mode == NetworkStatic && !s.Network.Address.IsValid() {
		r.errAt("network.mode", `network.mode = "static" needs network.address (e.g. "192.0.2.10/24", or ip=CLIENT:…)`)
	}
	fromDHCP := s.Server.FromDHCP || slices.ContainsFunc(s.Server.Endpoints, func(e Endpoint) bool { return e.HostFromDHCP })
	if fromDHCP && s.Network.Mode != NetworkDHCP {
		r.errAt("server.servers", fmt.Sprintf("the server comes from DHCP, but network.mode = %q (%s)", s.Network.Mode, r.originText("network.mode")))
	}
	if s.Server.BackoffInitial > s.Server.BackoffMax {
		r.errAt("server.backoff_initial", fmt.Sprintf("server.backoff_initial = %s is longer than server.backoff_max = %s (%s)",
			formatDuration(s.Server.BackoffInitial), formatDuration(s.Server.BackoffMax), r.originText("server.backoff_max")))
	}
	if !partial && len(r.errs) == 0 && !s.Server.FromDHCP && len(s.Server.Endpoints) == 0 {
		r.fail(origin{source: "cmdline"}, "no NBD server: add nbdroot=HOST:PORT/NAME (or root=nbd:HOST:PORT|NAME, or server.servers in the config file)")
	}
}

// writeTOML writes s as TOML, every key of every section; with origins, each
// value is followed by a comment saying where it came from.
func writeTOML(b *strings.Builder, s *Spec, origins map[string]string) {
	t := keyTable()
	for i, sec := range sections() {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(b, "[%s]\n", sec)
		var lines, comments []string
		width := 0
		for _, k := range t {
			section, leaf, _ := strings.Cut(k.name, ".")
			if section != sec {
				continue
			}
			l := leaf + " = " + literal(k.get(s))
			lines = append(lines, l)
			comments = append(comments, origins[k.name])
			if n := utf8.RuneCountInString(l); n > width && n <= 48 {
				width = n
			}
		}
		for j, l := range lines {
			if origins == nil {
				fmt.Fprintln(b, l)
			} else {
				fmt.Fprintf(b, "%-*s  # %s\n", width, l, commentText(comments[j])) // fmt pads to a width in runes
			}
		}
	}
}

// commentText makes s safe inside a TOML comment.
func commentText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// Format returns the resolved spec as TOML, every key = value followed by a
// comment saying where the value came from. It parses back to the same Spec.
func (r *Resolved) Format() string {
	var b strings.Builder
	b.WriteString("# nbdroot spec as resolved: defaults < ")
	if r.ConfigFile != "" {
		b.WriteString(commentText(r.ConfigFile))
	} else {
		b.WriteString("(no config file)")
	}
	b.WriteString(" < kernel command line.\n# Each value is followed by where it came from.\n\n")
	writeTOML(&b, &r.Spec, r.Origin)
	return b.String()
}
