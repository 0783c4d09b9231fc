package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// target is what one server string says.
type target struct {
	ep   Endpoint
	dhcp bool // "dhcp" or "": the whole endpoint comes from DHCP's root-path
	// What the URI implies: tls.required (nbds://, nbds+unix://), and
	// tls.server_name and tls.verify_peer (its query keys).
	tls []assign
}

// parseTarget parses one server string: an NBD URI (nbd://, nbds://,
// nbd+unix://, nbds+unix://), "dhcp" or "" (the server from DHCP's
// root-path), or Debian's HOST[:PORT][/NAME], HOST:/NAME, [V6][:PORT][/NAME].
func parseTarget(s string) (target, error) {
	switch {
	case s == "" || s == "dhcp":
		return target{dhcp: true}, nil
	case isURI(s):
		return parseURI(s)
	}
	ep, err := parseHostForm(s)
	return target{ep: ep}, err
}

// isURI reports whether s starts with SCHEME://.
// The scheme is a letter, then letters, digits, "+", "-" and ".".
func isURI(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	return ok && scheme != "" && onlyChars(scheme, "+-.") && !strings.ContainsAny(scheme[:1], "0123456789+-.")
}

// parseHostForm parses Debian's HOST[:PORT][/NAME] and its bracketed IPv6
// variant. "HOST:/NAME" keeps the slash in the name; an empty or "dhcp" host
// means the DHCP server.
func parseHostForm(s string) (Endpoint, error) {
	ep := Endpoint{Port: DefaultPort}
	var err error
	host, rest := s, ""
	if i := strings.IndexAny(s, ":/"); i >= 0 {
		host, rest = s[:i], s[i:]
	}
	hostPart, _, _ := strings.Cut(s, "/")
	switch a, notAddr := netip.ParseAddr(hostPart); {
	case strings.HasPrefix(s, "["):
		ep.Host, rest, err = cutBracketed(s, ":/")
	case strings.Count(hostPart, ":") > 1 && notAddr == nil:
		err = fmt.Errorf("IPv6 address %s must be in brackets: [%s]", hostPart, a)
	case strings.Count(hostPart, ":") > 1:
		err = fmt.Errorf("%q has more than one colon before the export name (IPv6 addresses go in brackets)", hostPart)
	default:
		err = ep.setHost(host)
	}
	if err != nil {
		return ep, err
	}
	port, hasPort := strings.CutPrefix(rest, ":") // rest is "", ":…" or "/…"
	ps, name, slash := strings.Cut(port, "/")
	switch {
	case hasPort && ps == "" && slash:
		name = "/" + name // HOST:/NAME keeps its slash
	case ps != "":
		ep.Port, err = parsePort(ps)
	}
	ep.Export = name
	return ep, cmp.Or(err, checkExport(name))
}

// cutBracketed parses the bracketed IPv6 address that starts s
// ("[2001:db8::1]:10809/x") and returns it in canonical form, and the rest
// of s, which must be empty or start with one of the bytes in next.
func cutBracketed(s, next string) (host, rest string, err error) {
	i := strings.IndexByte(s, ']')
	if i < 0 {
		return "", "", fmt.Errorf("IPv6 address %q has no closing ]", s)
	}
	a, err := netip.ParseAddr(s[1:i])
	if err != nil || !a.Is6() {
		return "", "", fmt.Errorf("%q is not an IPv6 address", s[1:i])
	}
	if rest = s[i+1:]; rest != "" && !strings.Contains(next, rest[:1]) {
		return "", "", fmt.Errorf("unexpected %q after ]", rest)
	}
	return a.String(), rest, nil
}

// setPortOrName reads a field that is a port when it is all digits and an
// export name otherwise (Debian's HOST,PORT|NAME, dracut's SERVER:PORT|NAME).
func (e *Endpoint) setPortOrName(s string) error {
	if s != "" && strings.Trim(s, "0123456789") == "" {
		p, err := parsePort(s)
		e.Port = p
		return err
	}
	e.Export = s
	return checkExport(s)
}

// setHost reads a DNS name, an IPv4 address or a bracketed IPv6 address
// ("[2001:db8::1]"), or "" or "dhcp" for the DHCP server (Debian's forms).
func (e *Endpoint) setHost(h string) (err error) {
	switch {
	case h == "" || h == "dhcp":
		e.HostFromDHCP = true
	case strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]"):
		e.Host, _, err = cutBracketed(h, "")
	default:
		e.Host, err = checkHost(h)
	}
	return err
}

// checkHost validates a DNS name or an IPv4 literal and returns it in
// canonical form.
func checkHost(h string) (string, error) {
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Is6() {
			return "", fmt.Errorf("IPv6 address %s must be in brackets: [%s]", h, a)
		}
		return a.String(), nil
	}
	bad := fmt.Errorf("host %q is not a valid host name or IP address", h)
	if len(h) > 253 {
		return "", bad
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || !onlyChars(label, "-_") {
			return "", bad
		}
	}
	if strings.Trim(h, "0123456789.") == "" {
		return "", fmt.Errorf("host %q is not a valid IPv4 address", h)
	}
	return h, nil
}

// parsePort parses a TCP port, 1-65535.
func parsePort(s string) (uint16, error) {
	if strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s is out of range 1-65535", s)
	}
	return uint16(n), nil
}

func checkExport(name string) error {
	if len(name) > MaxExportName {
		return fmt.Errorf("export name is %d bytes long; the limit is %d", len(name), MaxExportName)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("export name %q is not valid UTF-8", name)
	}
	return nil
}

// parseURI parses an NBD URI (NetworkBlockDevice/nbd doc/uri.md).
func parseURI(s string) (target, error) {
	var t target
	scheme, _, _ := strings.Cut(s, "://")
	lower := strings.ToLower(scheme)
	base, unix := strings.CutSuffix(lower, "+unix")
	if base != "nbd" && base != "nbds" {
		return t, fmt.Errorf("unknown URI scheme %q (want nbd://, nbds://, nbd+unix:// or nbds+unix://)", scheme)
	}
	if base == "nbds" {
		t.tls = []assign{{"tls.required", true}}
	}
	u, err := url.Parse(s)
	if err != nil {
		return t, fmt.Errorf("not a valid NBD URI: %v", errors.Unwrap(err)) // url.Parse's errors are *url.Error
	}
	if u.User != nil {
		return t, errors.New("user information (USER@) is not supported in NBD URIs")
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return t, errors.New("NBD URIs take no #fragment")
	}
	if u.Opaque != "" {
		return t, errors.New("not a valid NBD URI: want SCHEME://HOST[:PORT]/NAME")
	}
	t.ep.Export = strings.TrimPrefix(u.Path, "/")
	if err := checkExport(t.ep.Export); err != nil {
		return t, err
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return t, fmt.Errorf("bad query %q: %v", u.RawQuery, err)
	}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		vs := q[k]
		if len(vs) > 1 {
			return t, fmt.Errorf("query key %q is given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "tls-hostname":
			if v == "" {
				return t, errors.New("tls-hostname is empty")
			}
			if _, err := keyIndex()["tls.server_name"].check(v); err != nil {
				return t, fmt.Errorf("tls-hostname: %v", err)
			}
			t.tls = append(t.tls, assign{"tls.server_name", v})
		case "tls-verify-peer":
			b, ok := parseBool(v)
			if !ok {
				return t, fmt.Errorf("tls-verify-peer=%q is not a boolean (want true or false)", v)
			}
			t.tls = append(t.tls, assign{"tls.verify_peer", b})
		case "socket":
			if !unix {
				return t, fmt.Errorf("socket= is only for %s+unix:// URIs", lower)
			}
			if v == "" {
				return t, errors.New("socket= is empty")
			}
			t.ep.Socket = v
		default:
			return t, fmt.Errorf("query key %q is not supported (want tls-hostname, tls-verify-peer or socket)", k)
		}
	}
	if unix {
		if u.Host != "" {
			return t, fmt.Errorf("%s:// takes no host (got %q); the socket is ?socket=PATH", lower, u.Host)
		}
		if t.ep.Socket == "" {
			return t, fmt.Errorf("%s:// needs ?socket=PATH", lower)
		}
		return t, nil
	}
	t.ep.Port = DefaultPort
	if p := u.Port(); p != "" {
		if t.ep.Port, err = parsePort(p); err != nil {
			return t, err
		}
	}
	switch host := u.Hostname(); {
	case host == "":
		t.ep.HostFromDHCP = true
	case strings.HasPrefix(u.Host, "["):
		t.ep.Host, _, err = cutBracketed(u.Host, ":")
	default:
		t.ep.Host, err = checkHost(host)
	}
	return t, err
}

// String returns the endpoint in the form nbdroot reads back: Debian's
// HOST:PORT/NAME ([V6]:PORT/NAME; "dhcp" for the DHCP server), or
// nbd+unix:///NAME?socket=PATH for a Unix socket.
func (e Endpoint) String() string {
	if e.Socket != "" {
		u := url.URL{Scheme: "nbd+unix", Path: "/" + e.Export, RawQuery: "socket=" + url.QueryEscape(e.Socket)}
		return u.String()
	}
	host := e.Host
	switch {
	case e.HostFromDHCP:
		host = "dhcp"
	case strings.Contains(host, ":"):
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(e.Port)) + "/" + e.Export
}

// Server formats the endpoint without its export name: HOST:PORT,
// [V6]:PORT, or unix:PATH for a socket.
func (e Endpoint) Server() string {
	if e.Socket != "" {
		return "unix:" + e.Socket
	}
	s := e.String()
	return s[:strings.LastIndex(s, "/")]
}

// expandServers validates server.servers and returns the assignments it
// implies: the canonical list, and tls.* for nbds:// and URI query keys.
func expandServers(v any) ([]assign, error) {
	list := v.([]string)
	ts := make([]target, 0, len(list))
	for _, s := range list {
		t, err := bootTarget(s, len(list))
		if err != nil {
			return nil, fmt.Errorf("%q: %v", s, err)
		}
		ts = append(ts, t)
	}
	var b batch
	b.servers(ts...)
	return b.result()
}

// bootTarget parses one of n server strings and rejects what parses but
// cannot be booted from.
func bootTarget(s string, n int) (target, error) {
	t, err := parseTarget(s)
	switch {
	case err != nil:
	case t.dhcp && n > 1:
		err = errors.New("the server from DHCP's root-path cannot be combined with other servers")
	case t.ep.Socket != "":
		err = errors.New("a Unix socket is for probe, list and attach on a running system; boot needs a TCP server")
	}
	return t, err
}

// servers adds what a list of parsed servers sets: server.servers and,
// from URIs, tls.required, tls.server_name and tls.verify_peer.
func (b *batch) servers(ts ...target) {
	var canon []string
	tls := map[string]any{}
	for _, t := range ts {
		if t.dhcp {
			canon = append(canon, "dhcp")
			continue
		}
		canon = append(canon, t.ep.String())
		for _, a := range t.tls {
			switch prev, ok := tls[a.key]; {
			case !ok || prev == a.val:
			case a.key == "tls.server_name":
				b.fail(fmt.Errorf("servers disagree on tls-hostname (%q and %q); TLS settings are shared by all servers", prev, a.val))
			default:
				b.fail(errors.New("servers disagree on tls-verify-peer; TLS settings are shared by all servers"))
			}
			tls[a.key] = a.val
		}
	}
	b.add(assign{"server.servers", canon})
	for _, k := range []string{"tls.required", "tls.server_name", "tls.verify_peer"} {
		if v, ok := tls[k]; ok {
			b.add(assign{k, v})
		}
	}
}

// setServers stores a canonical server list (from expandServers).
func setServers(s *Spec, v any) {
	s.Server.Endpoints, s.Server.FromDHCP = nil, false
	for _, e := range v.([]string) {
		if t, err := parseTarget(e); t.dhcp {
			s.Server.FromDHCP = true
		} else if err == nil { // canonical lists always parse
			s.Server.Endpoints = append(s.Server.Endpoints, t.ep)
		}
	}
}

func getServers(s *Spec) any {
	var out []string
	if s.Server.FromDHCP {
		out = append(out, "dhcp")
	}
	for _, e := range s.Server.Endpoints {
		out = append(out, e.String())
	}
	return out
}

// ParseTarget parses the SPEC argument of `nbdroot probe`, `list` and
// `attach`: Defaults() with Server.Endpoints set to the one endpoint it
// names. It accepts HOST:PORT/NAME, HOST/NAME, HOST:/NAME (the name keeps its
// slash), [V6]:PORT/NAME, nbd://HOST[:PORT]/NAME, nbds://… (sets
// TLS.Enabled), nbd+unix:///NAME?socket=PATH, and the URI query keys
// tls-hostname (TLS.ServerName) and tls-verify-peer (TLS.VerifyPeer).
// Errors are *Error with Source "argument".
func ParseTarget(s string) (Spec, error) {
	var b batch
	t, err := parseTarget(s)
	switch {
	case s == "":
		err = errors.New("empty server (want HOST[:PORT]/NAME or nbd://HOST[:PORT]/NAME)")
	case err == nil && (t.dhcp || t.ep.HostFromDHCP):
		err = errors.New("no host: only a booting machine knows its DHCP server; name the server")
	}
	b.fail(err)
	b.servers(t)
	spec, err := b.spec("argument", s)
	if err == nil {
		// The endpoint as parsed: a host named "dhcp" does not read back
		// from its canonical text.
		spec.Server.Endpoints = []Endpoint{t.ep}
	}
	return spec, err
}

// ParseRootPath parses a DHCP root-path (option 17) for a spec whose
// Server.FromDHCP is set. It accepts the nbdroot= grammar: HOST:PORT/NAME,
// HOST/NAME, HOST:/NAME, [V6]:PORT/NAME, HOST,PORT, HOST,NAME,nbdN (sets
// Device.Index) and nbd:// or nbds:// URIs (set TLS.*). An empty or "dhcp"
// host gives an Endpoint with HostFromDHCP set: the caller substitutes the
// DHCP server's address. The result is Defaults() with those fields set;
// errors are *Error with Source "dhcp root-path".
func ParseRootPath(s string) (Spec, error) {
	var b batch
	if s == "" || s == "dhcp" {
		b.fail(errors.New("names no server"))
	}
	b.nbdroot(s)
	return b.spec("dhcp root-path", s)
}

// spec returns Defaults() with the batch's assignments, or its error as an
// *Error naming the input.
func (b *batch) spec(source, input string) (Spec, error) {
	as, err := b.result()
	if err != nil {
		return Spec{}, &Error{Source: source, Field: strconv.Quote(input), Msg: err.Error()}
	}
	s := Defaults()
	for _, a := range as {
		keyIndex()[a.key].set(&s, a.val)
	}
	return s, nil
}
