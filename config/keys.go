package config

import (
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nbdroot/nbdroot/nbddev"
)

// kind is the type of a TOML key's value.
type kind int

const (
	kString   kind = iota // TOML string
	kInt                  // TOML integer
	kBool                 // TOML boolean
	kDuration             // TOML string holding a Go duration ("5s")
	kList                 // TOML array of strings; comma-separated on the command line
	kAutoInt              // "auto" or a TOML integer
)

// want says what a kind accepts, for error messages.
func (k kind) want() string {
	switch k {
	case kString:
		return "a string"
	case kInt:
		return "an integer"
	case kBool:
		return "true or false"
	case kDuration:
		return `a duration string such as "5s"`
	case kList:
		return `a list of strings such as ["a", "b"]`
	case kAutoInt:
		return `"auto" or an integer`
	}
	return "a value"
}

// assign is one value for one key, normalized to the key's Go form:
// string, int64, bool, time.Duration or []string (kAutoInt: "auto" or int64).
type assign struct {
	key string
	val any
}

// keyDef describes one TOML key: how to check a value and where it lives in
// the Spec.
type keyDef struct {
	name string // "device.block_size"
	kind kind
	// conv validates and normalizes a value of kind; its error message names
	// the value. nil accepts every value.
	conv func(v any) (any, error)
	// expand replaces conv for keys whose value implies other keys
	// (server.servers implies tls.* for nbds:// URIs).
	expand func(v any) ([]assign, error)
	// set stores a normalized value; get reads it back in the same form.
	set func(s *Spec, v any)
	get func(s *Spec) any
}

// assigns validates v for key and returns what it sets.
func (k *keyDef) assigns(v any) ([]assign, error) {
	if k.expand != nil {
		return k.expand(v)
	}
	if k.conv != nil {
		nv, err := k.conv(v)
		if err != nil {
			return nil, err
		}
		v = nv
	}
	return []assign{{k.name, v}}, nil
}

// sections returns the TOML tables in output order.
func sections() []string {
	return []string{"server", "tls", "device", "network", "root", "boot"}
}

// keyTable returns every TOML key, grouped by section in output order.
func keyTable() []keyDef {
	return []keyDef{
		{name: "server.servers", kind: kList, expand: expandServers,
			set: setServers, get: getServers},
		durKey("server.connect_timeout", durPositive, func(s *Spec) *time.Duration { return &s.Server.ConnectTimeout }),
		durKey("server.handshake_timeout", durPositive, func(s *Spec) *time.Duration { return &s.Server.HandshakeTimeout }),
		durKey("server.deadline", durPositive, func(s *Spec) *time.Duration { return &s.Server.Deadline }),
		durKey("server.backoff_initial", durPositive, func(s *Spec) *time.Duration { return &s.Server.BackoffInitial }),
		durKey("server.backoff_max", durPositive, func(s *Spec) *time.Duration { return &s.Server.BackoffMax }),

		boolKey("tls.required", func(s *Spec) *bool { return &s.TLS.Enabled }),
		strKey("tls.ca", checkAbsPath, func(s *Spec) *string { return &s.TLS.CAFile }),
		strKey("tls.cert", checkAbsPath, func(s *Spec) *string { return &s.TLS.CertFile }),
		strKey("tls.key", checkAbsPath, func(s *Spec) *string { return &s.TLS.KeyFile }),
		strKey("tls.server_name", checkServerName, func(s *Spec) *string { return &s.TLS.ServerName }),
		boolKey("tls.verify_peer", func(s *Spec) *bool { return &s.TLS.VerifyPeer }),

		{name: "device.index", kind: kAutoInt, conv: convIndex,
			set: func(s *Spec, v any) {
				s.Device.Index = AutoIndex
				if n, ok := v.(int64); ok {
					s.Device.Index = int(n)
				}
			},
			get: func(s *Spec) any {
				if s.Device.Index == AutoIndex {
					return "auto"
				}
				return int64(s.Device.Index)
			}},
		{name: "device.interface", kind: kString,
			conv: oneOf(string(InterfaceAuto), string(InterfaceNetlink), string(InterfaceIoctl)),
			set:  func(s *Spec, v any) { s.Device.Interface = Interface(v.(string)) },
			get:  func(s *Spec) any { return string(s.Device.Interface) }},
		{name: "device.block_size", kind: kAutoInt, conv: convBlockSize,
			set: func(s *Spec, v any) {
				s.Device.BlockSize = 0
				if n, ok := v.(int64); ok {
					s.Device.BlockSize = uint32(n)
				}
			},
			get: func(s *Spec) any {
				if s.Device.BlockSize == 0 {
					return "auto"
				}
				return int64(s.Device.BlockSize)
			}},
		durKey("device.timeout", durWholeSeconds, func(s *Spec) *time.Duration { return &s.Device.Timeout }),
		durKey("device.dead_conn_timeout", durWholeSeconds, func(s *Spec) *time.Duration { return &s.Device.DeadConnTimeout }),
		intKey("device.connections", 1, MaxConnections, func(s *Spec) *int { return &s.Device.Connections }),
		boolKey("device.read_only", func(s *Spec) *bool { return &s.Device.ReadOnly }),

		{name: "network.mode", kind: kString,
			conv: oneOf(string(NetworkDHCP), string(NetworkStatic), string(NetworkNone)),
			set:  func(s *Spec, v any) { s.Network.Mode = NetworkMode(v.(string)) },
			get:  func(s *Spec) any { return string(s.Network.Mode) }},
		listKey("network.interfaces", checkIfName, func(s *Spec) *[]string { return &s.Network.Interfaces }),
		{name: "network.address", kind: kString, conv: convPrefix,
			set: func(s *Spec, v any) {
				s.Network.Address = netip.Prefix{}
				if v.(string) != "" {
					s.Network.Address = netip.MustParsePrefix(v.(string))
				}
			},
			get: func(s *Spec) any {
				if !s.Network.Address.IsValid() {
					return ""
				}
				return s.Network.Address.String()
			}},
		{name: "network.gateway", kind: kString, conv: convAddr,
			set: func(s *Spec, v any) {
				s.Network.Gateway = netip.Addr{}
				if v.(string) != "" {
					s.Network.Gateway = netip.MustParseAddr(v.(string))
				}
			},
			get: func(s *Spec) any {
				if !s.Network.Gateway.IsValid() {
					return ""
				}
				return s.Network.Gateway.String()
			}},
		{name: "network.dns", kind: kList, conv: convAddrList,
			set: func(s *Spec, v any) {
				s.Network.DNS = nil
				for _, a := range v.([]string) {
					s.Network.DNS = append(s.Network.DNS, netip.MustParseAddr(a))
				}
			},
			get: func(s *Spec) any {
				var out []string
				for _, a := range s.Network.DNS {
					out = append(out, a.String())
				}
				return out
			}},
		strKey("network.hostname", checkHostname, func(s *Spec) *string { return &s.Network.Hostname }),
		durKey("network.link_timeout", durPositive, func(s *Spec) *time.Duration { return &s.Network.LinkTimeout }),
		durKey("network.dhcp_timeout", durPositive, func(s *Spec) *time.Duration { return &s.Network.DHCPTimeout }),

		{name: "root.fstype", kind: kString, conv: convFSType,
			set: func(s *Spec, v any) { s.Root.FSType = v.(string) },
			get: func(s *Spec) any { return s.Root.FSType }},
		strKey("root.flags", checkNoControl, func(s *Spec) *string { return &s.Root.Flags }),
		boolKey("root.read_only", func(s *Spec) *bool { return &s.Root.ReadOnly }),
		intKey("root.partition", 0, MaxPartition, func(s *Spec) *int { return &s.Root.Partition }),
		{name: "root.overlay", kind: kString, conv: oneOf(OverlayNone, OverlayTmpfs),
			set: func(s *Spec, v any) { s.Root.Overlay = v.(string) },
			get: func(s *Spec) any { return s.Root.Overlay }},
		strKey("root.init", checkAbsPath, func(s *Spec) *string { return &s.Root.Init }),
		listKey("root.init_args", nil, func(s *Spec) *[]string { return &s.Root.InitArgs }),

		listKey("boot.modules", checkModule, func(s *Spec) *[]string { return &s.Boot.Modules }),
		{name: "boot.on_failure", kind: kString, conv: oneOf(FailShell, FailReboot, FailPoweroff, FailHalt),
			set: func(s *Spec, v any) { s.Boot.OnFailure = v.(string) },
			get: func(s *Spec) any { return s.Boot.OnFailure }},
		durKey("boot.failure_delay", durNonNegative, func(s *Spec) *time.Duration { return &s.Boot.FailureDelay }),
		{name: "boot.log_level", kind: kString, conv: oneOf("error", "info", "debug"),
			set: func(s *Spec, v any) { s.Boot.LogLevel = v.(string) },
			get: func(s *Spec) any { return s.Boot.LogLevel }},
	}
}

// keyIndex returns keyTable indexed by name.
func keyIndex() map[string]*keyDef {
	t := keyTable()
	m := make(map[string]*keyDef, len(t))
	for i := range t {
		m[t[i].name] = &t[i]
	}
	return m
}

// Limits enforced on the spec.
const (
	// MaxConnections bounds device.connections.
	MaxConnections = 64
	// MaxPartition bounds root.partition.
	MaxPartition = 255
	// MaxIndex bounds device.index (nbddev.MaxIndex).
	MaxIndex = nbddev.MaxIndex
	// MaxExportName is the NBD protocol's limit on export names, in bytes.
	MaxExportName = 4096
)

func strKey(name string, check func(string) error, ptr func(*Spec) *string) keyDef {
	return keyDef{name: name, kind: kString,
		conv: func(v any) (any, error) {
			s := v.(string)
			if s != "" && check != nil {
				if err := check(s); err != nil {
					return nil, err
				}
			}
			return s, nil
		},
		set: func(s *Spec, v any) { *ptr(s) = v.(string) },
		get: func(s *Spec) any { return *ptr(s) }}
}

func boolKey(name string, ptr func(*Spec) *bool) keyDef {
	return keyDef{name: name, kind: kBool,
		set: func(s *Spec, v any) { *ptr(s) = v.(bool) },
		get: func(s *Spec) any { return *ptr(s) }}
}

func intKey(name string, lo, hi int64, ptr func(*Spec) *int) keyDef {
	return keyDef{name: name, kind: kInt,
		conv: func(v any) (any, error) {
			n := v.(int64)
			if n < lo || n > hi {
				return nil, fmt.Errorf("%d is out of range %d-%d", n, lo, hi)
			}
			return n, nil
		},
		set: func(s *Spec, v any) { *ptr(s) = int(v.(int64)) },
		get: func(s *Spec) any { return int64(*ptr(s)) }}
}

func durKey(name string, check func(time.Duration) error, ptr func(*Spec) *time.Duration) keyDef {
	return keyDef{name: name, kind: kDuration,
		conv: func(v any) (any, error) {
			if err := check(v.(time.Duration)); err != nil {
				return nil, err
			}
			return v, nil
		},
		set: func(s *Spec, v any) { *ptr(s) = v.(time.Duration) },
		get: func(s *Spec) any { return *ptr(s) }}
}

func listKey(name string, check func(string) error, ptr func(*Spec) *[]string) keyDef {
	return keyDef{name: name, kind: kList,
		conv: func(v any) (any, error) {
			l := v.([]string)
			for _, e := range l {
				if check != nil {
					if err := check(e); err != nil {
						return nil, err
					}
				}
			}
			return l, nil
		},
		set: func(s *Spec, v any) {
			l := v.([]string)
			if len(l) == 0 {
				*ptr(s) = nil
				return
			}
			*ptr(s) = append([]string(nil), l...)
		},
		get: func(s *Spec) any { return append([]string(nil), *ptr(s)...) }}
}

func durPositive(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s is not a positive duration", formatDuration(d))
	}
	return nil
}

func durNonNegative(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("%s is negative", formatDuration(d))
	}
	return nil
}

// durWholeSeconds accepts 0 and whole seconds: the kernel counts seconds.
func durWholeSeconds(d time.Duration) error {
	if err := durNonNegative(d); err != nil {
		return err
	}
	if d%time.Second != 0 {
		return fmt.Errorf("%s is not a whole number of seconds (the kernel counts seconds)", formatDuration(d))
	}
	return nil
}

func oneOf(choices ...string) func(v any) (any, error) {
	return func(v any) (any, error) {
		s := v.(string)
		for _, c := range choices {
			if s == c {
				return s, nil
			}
		}
		return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(choices, ", "))
	}
}

func convIndex(v any) (any, error) {
	if v == "auto" {
		return v, nil
	}
	n := v.(int64)
	if n < 0 || n > MaxIndex {
		return nil, fmt.Errorf("%d is out of range 0-%d", n, MaxIndex)
	}
	return n, nil
}

func convBlockSize(v any) (any, error) {
	if v == "auto" {
		return v, nil
	}
	n := v.(int64)
	if n == 0 {
		return "auto", nil
	}
	if n < 0 {
		return nil, nbddev.CheckBlockSize(0)
	}
	if err := nbddev.CheckBlockSize(uint64(n)); err != nil {
		return nil, err
	}
	return n, nil
}

func convPrefix(v any) (any, error) {
	s := v.(string)
	if s == "" {
		return s, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an address with prefix length such as \"192.0.2.10/24\"", s)
	}
	return p.String(), nil
}

func convAddr(v any) (any, error) {
	s := v.(string)
	if s == "" {
		return s, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IP address", s)
	}
	return a.String(), nil
}

func convAddrList(v any) (any, error) {
	var out []string
	for _, s := range v.([]string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address", s)
		}
		out = append(out, a.String())
	}
	return out, nil
}

func convFSType(v any) (any, error) {
	s := v.(string)
	if s == "auto" {
		return "", nil
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return nil, fmt.Errorf("%q is not a filesystem type", s)
		}
	}
	return s, nil
}

func checkAbsPath(s string) error {
	if !path.IsAbs(s) {
		return fmt.Errorf("%q is not an absolute path", s)
	}
	return checkNoControl(s)
}

func checkNoControl(s string) error {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%q contains a control character", s)
		}
	}
	return nil
}

func checkServerName(s string) error {
	if strings.ContainsAny(s, " /") {
		return fmt.Errorf("%q is not a host name", s)
	}
	return checkNoControl(s)
}

// checkIfName accepts what the kernel accepts as a network interface name.
func checkIfName(s string) error {
	if s == "" || len(s) > 15 || s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n") || !utf8.ValidString(s) {
		return fmt.Errorf("%q is not a network interface name", s)
	}
	return checkNoControl(s)
}

func checkHostname(s string) error {
	if len(s) > 64 || strings.ContainsAny(s, " /") {
		return fmt.Errorf("%q is not a host name (at most 64 bytes, no spaces or slashes)", s)
	}
	return checkNoControl(s)
}

func checkModule(s string) error {
	if s == "" {
		return fmt.Errorf("empty module name")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Errorf("%q is not a module name", s)
		}
	}
	return nil
}

// fromString converts a command-line value to kind k.
func fromString(k kind, s string) (any, error) {
	switch k {
	case kString:
		return s, nil
	case kInt:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", s)
		}
		return n, nil
	case kAutoInt:
		if s == "auto" {
			return s, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not \"auto\" or an integer", s)
		}
		return n, nil
	case kBool:
		b, ok := parseBool(s)
		if !ok {
			return nil, fmt.Errorf("%q is not a boolean (want true or false)", s)
		}
		return b, nil
	case kDuration:
		return parseDuration(s)
	case kList:
		if s == "" {
			return []string(nil), nil
		}
		l := strings.Split(s, ",")
		for _, e := range l {
			if e == "" {
				return nil, fmt.Errorf("%q has an empty element", s)
			}
		}
		return l, nil
	}
	return nil, fmt.Errorf("unsupported kind")
}

// fromTOML converts a decoded TOML value to kind k.
func fromTOML(k kind, v any) (any, error) {
	bad := func() error {
		return fmt.Errorf("%s is %s; want %s", tomlText(v), tomlTypeName(v), k.want())
	}
	switch k {
	case kString:
		if s, ok := v.(string); ok {
			return s, nil
		}
	case kInt:
		if n, ok := v.(int64); ok {
			return n, nil
		}
	case kAutoInt:
		if n, ok := v.(int64); ok {
			return n, nil
		}
		if s, ok := v.(string); ok {
			if s == "auto" {
				return s, nil
			}
			return nil, fmt.Errorf("%q is not \"auto\" or an integer", s)
		}
	case kBool:
		if b, ok := v.(bool); ok {
			return b, nil
		}
	case kDuration:
		if s, ok := v.(string); ok {
			return parseDuration(s)
		}
	case kList:
		a, ok := v.([]any)
		if !ok {
			break
		}
		var out []string
		for _, e := range a {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("list element %s is %s; want a string", tomlText(e), tomlTypeName(e))
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, bad()
}

func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	}
	return "a datetime"
}

func tomlText(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case int64, float64, bool:
		return fmt.Sprint(x)
	case []any:
		return "[...]"
	case map[string]any, []map[string]any:
		return "{...}"
	}
	return fmt.Sprint(v)
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(s) {
	case "true", "yes", "on", "1":
		return true, true
	case "false", "no", "off", "0":
		return false, true
	}
	return false, false
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (want e.g. \"5s\", \"250ms\", \"2m\")", s)
	}
	return d, nil
}

// formatDuration is time.Duration.String without trailing zero units
// ("5m" rather than "5m0s").
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// literal renders a normalized value as TOML.
func literal(v any) string {
	switch x := v.(type) {
	case string:
		return tomlQuote(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case bool:
		return strconv.FormatBool(x)
	case time.Duration:
		return tomlQuote(formatDuration(x))
	case []string:
		q := make([]string, len(x))
		for i, e := range x {
			q[i] = tomlQuote(e)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return fmt.Sprintf("%v", v)
}

// tomlQuote returns s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// suggest returns the known name nearest to name, or "" if none is close.
func suggest(name string, known []string) string {
	best, bestD := "", min(3, max(1, len(name)/3))+1
	for _, k := range known {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, capped for long
// inputs.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		if a == b {
			return 0
		}
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			c = min(c, prev[j]+1, cur[j-1]+1)
			cur[j] = c
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
