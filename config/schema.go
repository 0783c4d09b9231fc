package config

import (
	"encoding"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	return [...]string{kString: "a string", kInt: "an integer", kBool: "true or false",
		kDuration: `a duration string such as "5s"`, kList: `a list of strings such as ["a", "b"]`,
		kAutoInt: `"auto" or an integer`}[k]
}

// assign is one value for one key, normalized to the key's Go form:
// string, int64, bool, time.Duration or []string (kAutoInt: "auto" or int64).
type assign struct {
	key string
	val any
}

// keyDef is one key of the schema, derived from a field of Spec by newKeyDef.
type keyDef struct {
	name  string       // "device.block_size"
	kind  kind         // the form of its values
	field []int        // the field's index path in Spec
	typ   reflect.Type // the field's type
	alias string       // the kernel argument that sets it too ("rootfstype")
	def   string       // the default as text; "" for the zero value
	auto  int64        // kAutoInt: the value "auto" stands for
	check check        // the field's check tag made a function; the identity for none
}

// check is a key's rule on its values, made from its check tag by
// namedCheck. It sees every value (every element of a list) in the key's
// Go form and returns it normalized, or says what is wrong with it.
type check func(any) (any, error)

// isServers reports whether t is server.servers' type, the one key whose
// value implies others.
func isServers(t reflect.Type) bool { return t == reflect.TypeFor[[]Endpoint]() }

// isText reports whether values of t parse from text (netip values).
func isText(t reflect.Type) bool {
	return reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextUnmarshaler]())
}

// sections returns the TOML tables in output order.
func sections() []string { return schema().sections }

// keyTable returns every key of the schema, derived from Spec's fields and
// their tags, grouped by section in output order.
func keyTable() []keyDef { return schema().keys }

// keyIndex returns keyTable indexed by name.
func keyIndex() map[string]*keyDef { return schema().index }

// knownKeys returns the name of every key.
func knownKeys() []string { return schema().names }

// schema derives the tables and keys on first use, as encoding/json caches
// what it derives from a type. It is not mutable state: every call sees the
// same tables, which never change; callers only read them.
var schema = sync.OnceValue(func() (s struct {
	sections []string
	keys     []keyDef
	names    []string
	index    map[string]*keyDef
}) {
	t := reflect.TypeFor[Spec]()
	for i := range t.NumField() {
		sec := t.Field(i)
		s.sections = append(s.sections, sec.Tag.Get("toml"))
		for j := range sec.Type.NumField() {
			f := sec.Type.Field(j)
			if name := f.Tag.Get("toml"); name != "-" {
				s.keys = append(s.keys, newKeyDef(s.sections[i]+"."+name, []int{i, j}, f))
			}
		}
	}
	s.index = make(map[string]*keyDef, len(s.keys))
	for i, k := range s.keys {
		s.index[k.name] = &s.keys[i]
		s.names = append(s.names, k.name)
	}
	return s
})

// newKeyDef derives a key from a field. A field the schema cannot express is
// a programming error, caught by every test.
func newKeyDef(name string, index []int, f reflect.StructField) keyDef {
	k := keyDef{name: name, field: index, typ: f.Type, alias: f.Tag.Get("cmdline"), def: f.Tag.Get("default"),
		check: namedCheck(f.Tag.Get("check"))}
	switch t := f.Type; {
	case t == reflect.TypeFor[time.Duration]():
		k.kind = kDuration
	case t.Kind() == reflect.Bool:
		k.kind = kBool
	case t.Kind() == reflect.Int || t.Kind() == reflect.Uint32:
		k.kind = kInt
		if a, ok := f.Tag.Lookup("auto"); ok {
			n, err := strconv.ParseInt(a, 10, 64)
			if err != nil {
				panic("config: " + name + ": bad auto tag")
			}
			k.kind, k.auto = kAutoInt, n
		}
	case t.Kind() == reflect.String || isText(t):
		k.kind = kString
	case isServers(t) || t.Kind() == reflect.Slice && (t.Elem().Kind() == reflect.String || isText(t.Elem())):
		k.kind = kList
	default:
		panic("config: " + name + ": no TOML form for " + t.String())
	}
	return k
}

// assigns validates v for the key and returns what it sets: the key, and
// for server.servers what its URIs imply (tls.*).
func (k *keyDef) assigns(v any) ([]assign, error) {
	if isServers(k.typ) {
		return expandServers(v)
	}
	v, err := k.conv(v)
	if err != nil {
		return nil, err
	}
	return []assign{{k.name, v}}, nil
}

// parse reads the text form of a value, as nbdroot.KEY=VALUE gives it, and
// returns what it sets.
func (k *keyDef) parse(text string) ([]assign, error) {
	v, err := fromString(k.kind, text)
	if err != nil {
		return nil, err
	}
	return k.assigns(v)
}

// conv checks a value of the key's kind and returns it normalized: netip
// values canonical, "auto" for the integer it stands for. The elements of a
// list are checked one by one.
func (k *keyDef) conv(v any) (any, error) {
	l, isList := v.([]string)
	if !isList {
		return k.convOne(k.typ, v)
	}
	var out []string
	for _, e := range l {
		if e == "" && isText(k.typ.Elem()) {
			return nil, fmt.Errorf("%q is not %s", e, textWant(k.typ.Elem()))
		}
		x, err := k.convOne(k.typ.Elem(), e)
		if err != nil {
			return nil, err
		}
		out = append(out, x.(string))
	}
	return out, nil
}

// convOne is conv for a scalar value of type t.
func (k *keyDef) convOne(t reflect.Type, v any) (any, error) {
	v, err := k.check(v)
	if err != nil {
		return nil, err
	}
	if s, ok := v.(string); ok && isText(t) {
		return convText(t, s)
	}
	if k.kind == kAutoInt && v == any(k.auto) {
		return "auto", nil
	}
	return v, nil
}

// convText parses s as a value of t (an encoding.TextUnmarshaler such as
// netip.Addr) and returns its canonical text.
func convText(t reflect.Type, s string) (string, error) {
	p := reflect.New(t)
	if p.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)) != nil {
		return "", fmt.Errorf("%q is not %s", s, textWant(t))
	}
	b, err := p.Interface().(encoding.TextMarshaler).MarshalText()
	return string(b), err
}

// textWant says what a text type accepts, for error messages.
func textWant(t reflect.Type) string {
	if t == reflect.TypeFor[netip.Prefix]() {
		return `an address with prefix length such as "192.0.2.10/24"`
	}
	return "an IP address"
}

// set stores a normalized value in s.
func (k *keyDef) set(s *Spec, v any) {
	if isServers(k.typ) {
		setServers(s, v)
		return
	}
	f := reflect.ValueOf(s).Elem().FieldByIndex(k.field)
	l, isList := v.([]string)
	switch {
	case isList:
		f.SetZero()
		if len(l) > 0 {
			f.Set(reflect.MakeSlice(f.Type(), len(l), len(l)))
		}
		for i, e := range l {
			setScalar(f.Index(i), e)
		}
	case v == "auto" && k.kind == kAutoInt:
		setScalar(f, k.auto)
	default:
		setScalar(f, v)
	}
}

// setScalar stores a normalized scalar in f, parsing the text of text types.
func setScalar(f reflect.Value, v any) {
	if s, ok := v.(string); ok && isText(f.Type()) {
		_ = f.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)) // checked by conv
		return
	}
	f.Set(reflect.ValueOf(v).Convert(f.Type()))
}

// get reads the key's value from s in the form set takes.
func (k *keyDef) get(s *Spec) any {
	if isServers(k.typ) {
		return getServers(s)
	}
	f := reflect.ValueOf(s).Elem().FieldByIndex(k.field)
	if k.kind == kList {
		var out []string
		for i := range f.Len() {
			out = append(out, getScalar(f.Index(i)).(string))
		}
		return out
	}
	v := getScalar(f)
	if k.kind == kAutoInt && v == k.auto {
		return "auto"
	}
	return v
}

// getScalar reads f as string, bool, time.Duration or int64.
func getScalar(f reflect.Value) any {
	switch {
	case isText(f.Type()):
		b, _ := f.Interface().(encoding.TextMarshaler).MarshalText()
		return string(b)
	case f.Kind() == reflect.String:
		return f.String()
	case f.Kind() == reflect.Bool || f.Type() == reflect.TypeFor[time.Duration]():
		return f.Interface()
	}
	return f.Convert(reflect.TypeFor[int64]()).Interface()
}

// namedCheck returns the check a field's check tag names.
func namedCheck(name string) check {
	noControl := rule(func(s string) bool { return !strings.ContainsFunc(s, isControl) }, "%q contains a control character")
	c, ok := map[string]check{"": func(v any) (any, error) { return v, nil },
		"positive":    rule(func(d time.Duration) bool { return d > 0 }, "%s is not a positive duration"),
		"nonnegative": rule(func(d time.Duration) bool { return d >= 0 }, "%s is negative"),
		// 0 and whole seconds: the kernel counts seconds.
		"seconds": rule(func(d time.Duration) bool { return d >= 0 }, "%s is negative",
			rule(func(d time.Duration) bool { return d%time.Second == 0 }, "%s is not a whole number of seconds (the kernel counts seconds)")),
		"abspath":    rule(func(s string) bool { return s == "" || path.IsAbs(s) }, "%q is not an absolute path", noControl),
		"nocontrol":  noControl,
		"servername": rule(func(s string) bool { return !strings.ContainsAny(s, " /") }, "%q is not a host name", noControl),
		"hostname": rule(func(s string) bool { return len(s) <= 64 && !strings.ContainsAny(s, " /") },
			"%q is not a host name (at most 64 bytes, no spaces or slashes)", noControl),
		// What the kernel accepts as a network interface name.
		"ifname": rule(func(s string) bool {
			return s != "" && len(s) <= 15 && s != "." && s != ".." && !strings.ContainsAny(s, "/: \t\n") && utf8.ValidString(s)
		}, "%q is not a network interface name", noControl),
		"module": func(v any) (any, error) {
			if v == "" {
				return nil, errors.New("empty module name")
			}
			return rule(func(s string) bool { return onlyChars(s, "_-") }, "%q is not a module name")(v)
		},
		"fstype": func(v any) (any, error) {
			if v == "auto" {
				return "", nil
			}
			return rule(func(s string) bool { return onlyChars(s, "._-") }, "%q is not a filesystem type")(v)
		},
		"index":       intRange(0, MaxIndex),
		"connections": intRange(1, MaxConnections),
		"partition":   intRange(0, MaxPartition),
		// 0 ("auto") and nbddev's rule.
		"blocksize": func(v any) (any, error) {
			if n, ok := v.(int64); ok && n != 0 {
				return v, nbddev.CheckBlockSize(n)
			}
			return v, nil
		},
		"interface":  oneOf(InterfaceAuto, InterfaceNetlink, InterfaceIoctl),
		"mode":       oneOf(NetworkDHCP, NetworkStatic, NetworkNone),
		"order":      oneOf(OrderListed, OrderSpread),
		"overlay":    oneOf(OverlayNone, OverlayTmpfs),
		"on_failure": oneOf(FailShell, FailReboot, FailPoweroff, FailHalt),
		"log_level":  oneOf("error", "info", "debug"),
	}[name]
	if !ok {
		panic("config: unknown check " + strconv.Quote(name))
	}
	return c
}

// rule returns a check of T values: a value ok rejects fails with msg,
// formatted with the value (a duration as formatDuration writes it); one it
// accepts must pass the checks in then. Values of other types ("auto" for
// an integer) pass.
func rule[T any](ok func(T) bool, msg string, then ...check) check {
	return func(v any) (any, error) {
		if x, isT := v.(T); isT && !ok(x) {
			if d, isDur := v.(time.Duration); isDur {
				return nil, fmt.Errorf(msg, formatDuration(d))
			}
			return nil, fmt.Errorf(msg, v)
		}
		for _, c := range then {
			if _, err := c(v); err != nil {
				return nil, err
			}
		}
		return v, nil
	}
}

// isControl reports whether r is an ASCII control character.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// onlyChars reports whether s has only ASCII letters, digits and the bytes
// of extra.
func onlyChars(s, extra string) bool {
	return strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"+extra) == ""
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

// Set stores one key of s given as text, exactly as nbdroot.KEY=VALUE on
// the kernel command line would: the same parser, the same checks, the same
// messages, and the keys a value implies (an nbds:// server sets
// tls.required). The rules between keys that Resolve applies are not
// checked. The error is an *Error whose Field is the key and whose Source is
// empty, for the caller to name the flag or input.
func (s *Spec) Set(key, value string) error {
	k, ok := keyIndex()[key]
	if !ok {
		return &Error{Field: key, Msg: unknownKeyMsg(key, "", knownKeys(), nil)}
	}
	as, err := k.parse(value)
	if err != nil {
		return &Error{Field: key, Msg: err.Error()}
	}
	for _, a := range as {
		keyIndex()[a.key].set(s, a.val)
	}
	return nil
}

// Flag returns key of s as a flag.Value: Set is Spec.Set, String the
// current value in the text form Set accepts. It panics if key is unknown.
func (s *Spec) Flag(key string) *KeyFlag {
	if _, ok := keyIndex()[key]; !ok {
		panic("config: unknown key " + strconv.Quote(key))
	}
	return &KeyFlag{spec: s, key: key}
}

// KeyFlag is one key of a Spec as a flag.Value, from Spec.Flag.
type KeyFlag struct {
	spec *Spec
	key  string
}

// String returns the key's value as text ("5s", "auto", "a,b"); "" for the
// zero KeyFlag.
func (f *KeyFlag) String() string {
	if f == nil || f.spec == nil {
		return ""
	}
	switch v := keyIndex()[f.key].get(f.spec).(type) {
	case time.Duration:
		return formatDuration(v)
	case []string:
		return strings.Join(v, ",")
	default:
		return fmt.Sprint(v)
	}
}

// Set applies text to the key with Spec.Set. Its *Error leaves the key
// out: the flag package names the flag.
func (f *KeyFlag) Set(text string) error {
	err := f.spec.Set(f.key, text)
	if e, ok := err.(*Error); ok {
		e.Field = ""
	}
	return err
}

// IsBoolFlag makes a boolean key a flag that needs no value (--read-only).
func (f *KeyFlag) IsBoolFlag() bool { return keyIndex()[f.key].kind == kBool }

func intRange(lo, hi int64) check {
	return rule(func(n int64) bool { return n >= lo && n <= hi }, fmt.Sprintf("%%d is out of range %d-%d", lo, hi))
}

func oneOf[T ~string](choices ...T) check {
	return func(v any) (any, error) {
		s := v.(string)
		var names []string
		for _, c := range choices {
			if s == string(c) {
				return s, nil
			}
			names = append(names, string(c))
		}
		return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(names, ", "))
	}
}

// fromString converts a command-line value to kind k.
func fromString(k kind, s string) (any, error) {
	switch k {
	case kInt, kAutoInt:
		if k == kAutoInt && s == "auto" {
			return s, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not %s", s, k.want())
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
		if slices.Contains(l, "") {
			return nil, fmt.Errorf("%q has an empty element", s)
		}
		return l, nil
	}
	return s, nil // kString
}

// fromTOML converts a decoded TOML value to kind k.
func fromTOML(k kind, v any) (any, error) {
	switch x := v.(type) {
	case string:
		switch {
		case k == kString || k == kAutoInt && x == "auto":
			return x, nil
		case k == kDuration:
			return parseDuration(x)
		case k == kAutoInt:
			return nil, fmt.Errorf("%q is not %s", x, k.want())
		}
	case int64:
		if k == kInt || k == kAutoInt {
			return x, nil
		}
	case bool:
		if k == kBool {
			return x, nil
		}
	case []any:
		if k != kList {
			break
		}
		var out []string
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("list element %s; want a string", tomlDesc(e))
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s; want %s", tomlDesc(v), k.want())
}

// tomlDesc describes a decoded TOML value for an error message: its text
// and its type ("3 is an integer").
func tomlDesc(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x) + " is a string"
	case int64:
		return fmt.Sprint(x, " is an integer")
	case float64:
		return fmt.Sprint(x, " is a float")
	case bool:
		return fmt.Sprint(x, " is a boolean")
	case []any:
		return "[...] is an array"
	case map[string]any:
		return "{...} is a table"
	case []map[string]any:
		return "{...} is an array of tables"
	}
	return fmt.Sprint(v, " is a datetime")
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
	case time.Duration:
		return tomlQuote(formatDuration(x))
	case []string:
		q := make([]string, len(x))
		for i, e := range x {
			q[i] = tomlQuote(e)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return fmt.Sprint(v) // int64, bool
}

// tomlQuote returns s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch i := strings.IndexRune("\b\t\n\f\r", r); {
		case r == '"' || r == '\\':
			b.WriteString(`\` + string(r))
		case i >= 0:
			b.WriteString(`\` + "btnfr"[i:i+1])
		case isControl(r):
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
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
	row := make([]int, len(b)+1)
	for j := range row {
		row[j] = j
	}
	for i := 1; i <= len(a); i++ {
		diag := row[0] // the distance of a[:i-1] and b[:j-1]
		row[0] = i
		for j := 1; j <= len(b); j++ {
			c := diag
			if a[i-1] != b[j-1] {
				c++
			}
			diag, row[j] = row[j], min(c, row[j]+1, row[j-1]+1)
		}
	}
	return row[len(b)]
}
