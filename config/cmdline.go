package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// karg is one kernel command-line argument after quote removal.
type karg struct {
	name   string
	val    string
	hasVal bool
}

// joined is the argument as the kernel hands it on: NAME or NAME=VALUE.
func (a karg) joined() string {
	if !a.hasVal {
		return a.name
	}
	return a.name + "=" + a.val
}

// field is the argument as error messages show it: NAME or NAME="VALUE".
func (a karg) field() string {
	if !a.hasVal {
		return a.name
	}
	return a.name + "=" + strconv.Quote(a.val)
}

// text is the argument as origins show it: quoted only when needed.
func (a karg) text() string {
	if !a.hasVal {
		return quoteIfNeeded(a.name)
	}
	return a.name + "=" + quoteIfNeeded(a.val)
}

func quoteIfNeeded(s string) string {
	for _, r := range s {
		if r <= ' ' || r == '"' || r == '\\' || r >= 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}

// isKernelSpace is the kernel's isspace (lib/ctype.c), which includes 0xa0.
func isKernelSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0xa0:
		return true
	}
	return false
}

func skipSpaces(s string) string {
	for len(s) > 0 && isKernelSpace(s[0]) {
		s = s[1:]
	}
	return s
}

// nextArg is the kernel's next_arg (lib/cmdline.c): double quotes group
// words and are removed at the start of the argument or of its value and at
// its end; quotes elsewhere are kept.
func nextArg(s string) (karg, string) {
	quoted, inQuote := false, false
	if s[0] == '"' {
		s = s[1:]
		quoted, inQuote = true, true
	}
	i, equals := 0, 0
	for ; i < len(s); i++ {
		if isKernelSpace(s[i]) && !inQuote {
			break
		}
		if equals == 0 && s[i] == '=' {
			equals = i
		}
		if s[i] == '"' {
			inQuote = !inQuote
		}
	}
	end := i
	rest := ""
	if i < len(s) {
		rest = s[i+1:]
	}
	var a karg
	if equals == 0 {
		e := end
		if quoted && e > 0 && s[e-1] == '"' {
			e--
		}
		a.name = s[:e]
	} else {
		a.name, a.hasVal = s[:equals], true
		vs, ve := equals+1, end
		trimmed := false
		if vs < end && s[vs] == '"' {
			vs++
			if s[end-1] == '"' {
				ve, trimmed = end-1, true
			}
		}
		if quoted && !trimmed && s[end-1] == '"' {
			ve = end - 1
		}
		if ve < vs {
			ve = vs
		}
		a.val = s[vs:ve]
	}
	return a, skipSpaces(rest)
}

// splitKernel splits a command line as the kernel does: arguments up to a
// bare `--`, and the arguments after it, which go to init.
func splitKernel(cmdline string) (args, initArgs []karg) {
	s := skipSpaces(cmdline)
	dashes := false
	for s != "" {
		var a karg
		a, s = nextArg(s)
		if !a.hasVal && a.name == "--" {
			if dashes {
				break // the kernel stops at a second "--" too
			}
			dashes = true
			continue
		}
		if !a.hasVal && a.name == "" {
			continue
		}
		if dashes {
			initArgs = append(initArgs, a)
		} else {
			args = append(args, a)
		}
	}
	return args, initArgs
}

// SplitCmdline splits a kernel command line (the contents of /proc/cmdline)
// the way the kernel does: words are separated by white space; double quotes
// group words (`param="value with spaces"`, `"a b"`) and are removed; the
// words after a bare `--` are the init's arguments. Each word is returned as
// NAME or NAME=VALUE.
func SplitCmdline(cmdline string) (args []string, initArgs []string) {
	a, ia := splitKernel(cmdline)
	for _, x := range a {
		args = append(args, x.joined())
	}
	for _, x := range ia {
		initArgs = append(initArgs, x.joined())
	}
	return args, initArgs
}

// cmdRule says how nbdroot reads a kernel argument: the family it belongs
// to ("" if nbdroot ignores it) and its parser. Within a family the last
// argument wins, as in the kernel; different families that set one key to
// different values are a contradiction. Besides nbdroot.KEY=VALUE and the
// aliases named by Spec's cmdline tags (rootfstype=…), nbdroot reads the
// grammars of nbdroot=, nbddev=, root=, netroot=, ip=, ro and rw.
func cmdRule(a karg) (family string, parse func() ([]assign, error)) {
	v := a.val
	key := func(name string, val any) func() ([]assign, error) {
		return func() ([]assign, error) { return keyIndex()[name].assigns(val) }
	}
	switch {
	case a.name == "nbdroot":
		return a.name, func() ([]assign, error) { return parseNbdroot(v) }
	case a.name == "ro" || a.name == "rw":
		if a.hasVal {
			return "", nil // the kernel only honours bare ro and rw
		}
		return "ro/rw", key("root.read_only", a.name == "ro")
	case strings.HasPrefix(a.name, "nbdroot."):
		return a.name, func() ([]assign, error) { return parseKeyArg(a) }
	case !a.hasVal:
		return "", nil
	}
	switch a.name {
	case "nbddev":
		return a.name, func() ([]assign, error) {
			n, err := parseNbdDev(v)
			if err != nil {
				return nil, err
			}
			return keyIndex()["device.index"].assigns(int64(n))
		}
	case "root", "netroot":
		return a.name, func() ([]assign, error) { return parseRoot(v, a.name == "root") }
	case "ip":
		return a.name, func() ([]assign, error) { return parseIP(v) }
	}
	for _, k := range keyTable() {
		if k.alias == a.name {
			return a.name, key(k.name, v)
		}
	}
	return "", nil
}

// parseKeyArg parses nbdroot.KEY=VALUE.
func parseKeyArg(a karg) ([]assign, error) {
	name := strings.TrimPrefix(a.name, "nbdroot.")
	k, ok := keyIndex()[name]
	if !ok {
		msg := "unknown key"
		if s := suggest(name, append([]string{"config"}, knownKeys()...)); s != "" {
			msg += " (did you mean nbdroot." + s + "?)"
		}
		return nil, errors.New(msg)
	}
	if !a.hasVal {
		return nil, fmt.Errorf("needs a value: nbdroot.%s=VALUE", name)
	}
	val, err := fromString(k.kind, a.val)
	if err != nil {
		return nil, err
	}
	return k.assigns(val)
}

// parseNbdroot parses Debian's nbdroot= value (and nbdroot's URI forms).
func parseNbdroot(v string) ([]assign, error) {
	if strings.Contains(v, ",") && !isURI(v) {
		return parseNbdrootCommas(v)
	}
	t, err := bootTarget(v, true, 1)
	if err != nil {
		return nil, err
	}
	return serverAssigns([]target{t})
}

// parseNbdrootCommas parses Debian's HOST,PORT and HOST,NAME,nbdN.
func parseNbdrootCommas(v string) ([]assign, error) {
	parts := strings.Split(v, ",")
	if len(parts) > 3 {
		return nil, errors.New("too many commas (want HOST,PORT or HOST,NAME,nbdN)")
	}
	ep := Endpoint{Port: DefaultPort}
	var err error
	if host := parts[0]; strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		ep.Host, _, err = cutBracketed(host, "")
	} else {
		err = ep.setHost(host)
	}
	if err != nil {
		return nil, err
	}
	if err := ep.setPortOrName(parts[1]); err != nil {
		return nil, err
	}
	out, err := serverAssigns([]target{{ep: ep}})
	if err != nil {
		return nil, err
	}
	if len(parts) == 3 {
		n, err := parseNbdDev(parts[2])
		if err != nil {
			return nil, err
		}
		out = append(out, assign{"device.index", int64(n)})
	}
	return out, nil
}

// parseNbdDev parses nbdN or /dev/nbdN.
func parseNbdDev(s string) (int, error) {
	n, part, err := parseDevNbd(s)
	if err != nil || part >= 0 {
		return 0, fmt.Errorf("%q is not an nbd device (want /dev/nbdN)", s)
	}
	return n, nil
}

// parseDevNbd parses /dev/nbdN[pM] (or nbdN[pM]); part is -1 without pM.
func parseDevNbd(s string) (n, part int, err error) {
	rest, ok := strings.CutPrefix(strings.TrimPrefix(s, "/dev/"), "nbd")
	if !ok {
		return 0, 0, errors.New("not an nbd device")
	}
	num, ps, hasP := strings.Cut(rest, "p")
	n, err = smallInt(num, MaxIndex)
	if err != nil {
		return 0, 0, err
	}
	part = -1
	if hasP {
		part, err = smallInt(ps, MaxPartition)
		if err != nil || part == 0 {
			return 0, 0, errors.New("bad partition")
		}
	}
	return n, part, nil
}

// smallInt parses a decimal number without sign, at most max.
func smallInt(s string, max int) (int, error) {
	if s == "" || len(s) > 6 || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	n, _ := strconv.Atoi(s)
	if n > max {
		return 0, errors.New("too large")
	}
	return n, nil
}

// parseRoot parses root= and netroot=. Values that are not nbdroot's
// (root=/dev/sda1, netroot=iscsi:…) set nothing.
func parseRoot(v string, isRoot bool) ([]assign, error) {
	switch {
	case isURI(v) && (strings.HasPrefix(v, "nbd") || strings.HasPrefix(v, "NBD")):
		t, err := bootTarget(v, false, 1)
		if err != nil {
			return nil, err
		}
		return serverAssigns([]target{t})
	case strings.HasPrefix(v, "nbd:"):
		return parseDracut(v[len("nbd:"):])
	case isRoot && strings.HasPrefix(v, "/dev/nbd"):
		n, part, err := parseDevNbd(v)
		if err != nil {
			return nil, fmt.Errorf("%q is not an nbd device (want /dev/nbdN or /dev/nbdNpM)", v)
		}
		if part < 0 {
			part = 0
		}
		return []assign{{"device.index", int64(n)}, {"root.partition", int64(part)}}, nil
	}
	return nil, nil
}

// parseDracut parses dracut's SERVER:PORT|NAME[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]]
// (after "nbd:"). SERVER may be a bracketed IPv6 address.
func parseDracut(v string) ([]assign, error) {
	var host, rest string
	if strings.HasPrefix(v, "[") {
		var err error
		if host, rest, err = cutBracketed(v, ":"); err != nil {
			return nil, err
		}
		rest = strings.TrimPrefix(rest, ":")
	} else {
		host, rest, _ = strings.Cut(v, ":")
		if host == "" {
			return nil, errors.New("no server (want nbd:SERVER:PORT|NAME[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]])")
		}
		var err error
		if host, err = checkHost(host); err != nil {
			return nil, err
		}
	}
	fields := strings.SplitN(rest, ":", 4)
	for len(fields) < 4 {
		fields = append(fields, "")
	}
	portOrName, fstype, flags, opts := fields[0], fields[1], fields[2], fields[3]
	ep := Endpoint{Host: host, Port: DefaultPort}
	if err := ep.setPortOrName(portOrName); err != nil {
		return nil, err
	}
	out, err := serverAssigns([]target{{ep: ep}})
	if err != nil {
		return nil, err
	}
	if fstype != "" {
		if out, err = addKey(out, "root.fstype", "root.fstype", fstype); err != nil {
			return nil, err
		}
	}
	if flags != "" {
		var rest []string
		for _, f := range strings.Split(flags, ",") {
			switch f {
			case "ro":
				out = append(out, assign{"root.read_only", true})
			case "rw":
				out = append(out, assign{"root.read_only", false})
			case "":
			default:
				rest = append(rest, f)
			}
		}
		if len(rest) > 0 {
			if out, err = addKey(out, "root.flags", "root.flags", strings.Join(rest, ",")); err != nil {
				return nil, err
			}
		}
	}
	if opts != "" {
		as, err := parseNBDOpts(opts)
		if err != nil {
			return nil, err
		}
		out = append(out, as...)
	}
	return out, nil
}

// parseNBDOpts maps dracut's comma-separated nbd-client options.
func parseNBDOpts(opts string) ([]assign, error) {
	var out []assign
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(o, "-"), "=")
		var key string
		switch name {
		case "ro", "readonly", "r":
			if !hasVal {
				out = append(out, assign{"device.read_only", true})
				continue
			}
		case "persist", "p", "systemd-mark", "m":
			// nbdroot always reconnects, and its keeper always survives
			// shutdown's killing spree.
			if !hasVal {
				continue
			}
		case "nonetlink", "L":
			if !hasVal {
				out = append(out, assign{"device.interface", string(InterfaceIoctl)})
				continue
			}
		case "timeout", "t":
			key = "device.timeout"
		case "bs", "block-size", "b":
			key = "device.block_size"
		case "connections", "C":
			key = "device.connections"
		}
		if key == "" || !hasVal {
			return nil, fmt.Errorf("NBD option %q is not supported (want ro, persist, systemd-mark, nonetlink, timeout=SECONDS, bs=BYTES or connections=N)", o)
		}
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("NBD option %q: %q is not an integer", o, val)
		}
		var v any = n
		if key == "device.timeout" {
			if n < 0 || n > 1<<31 {
				return nil, fmt.Errorf("NBD option %q: %d is out of range", o, n)
			}
			v = time.Duration(n) * time.Second
		}
		if out, err = addKey(out, fmt.Sprintf("NBD option %q", o), key, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// addKey appends what key = v sets to out; what names the input in an
// error.
func addKey(out []assign, what, key string, v any) ([]assign, error) {
	as, err := keyIndex()[key].assigns(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	return append(out, as...), nil
}

// splitIPFields splits ip='s value on colons outside [brackets].
func splitIPFields(v string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '[':
			depth++
		case ']':
			if depth > 0 {
				depth--
			}
		case ':':
			if depth == 0 {
				out = append(out, v[start:i])
				start = i + 1
			}
		}
	}
	return append(out, v[start:])
}

// autoconf maps ip='s AUTOCONF field to a network mode.
func autoconf(s string) (NetworkMode, error) {
	switch s {
	case "", "off", "none":
		return NetworkNone, nil
	case "on", "any", "dhcp", "both", "bootp":
		return NetworkDHCP, nil
	case "rarp":
		return "", errors.New("autoconf rarp is not supported (use dhcp)")
	}
	return "", fmt.Errorf("autoconf %q is not one of off, none, on, any, dhcp, bootp, both", s)
}

func ipAddrField(name, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return a, fmt.Errorf("%s %q is not an IP address", name, s)
	}
	return a, nil
}

// parseIP parses the kernel's ip= (Documentation/admin-guide/nfs/nfsroot.rst):
// CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0, its
// keywords, and dracut's DEVICE:AUTOCONF.
func parseIP(v string) ([]assign, error) {
	f := splitIPFields(v)
	if len(f) == 1 && f[0] != "" {
		if !strings.ContainsAny(f[0], ".:[") { // a keyword, not a client address
			mode, err := autoconf(f[0])
			if err != nil {
				return nil, err
			}
			return []assign{{"network.mode", string(mode)}}, nil
		}
	}
	if len(f) == 2 {
		if mode, err := autoconf(f[1]); err == nil && f[1] != "" {
			if _, err := netip.ParseAddr(strings.Trim(f[0], "[]")); err != nil {
				// dracut's ip=DEVICE:AUTOCONF.
				return addKey([]assign{{"network.mode", string(mode)}}, "device", "network.interfaces", []string{f[0]})
			}
		}
	}
	if len(f) > 10 {
		return nil, fmt.Errorf("%d fields; want at most 10 (CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0)", len(f))
	}
	for len(f) < 10 {
		f = append(f, "")
	}
	client, server, gw, mask, host, dev, auto, dns0, dns1, ntp := f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]
	mode, err := autoconf(auto)
	if err != nil {
		return nil, err
	}
	var out []assign
	if client != "" {
		a, err := ipAddrField("client address", client)
		if err != nil {
			return nil, err
		}
		bits, err := netmaskBits(mask, a)
		if err != nil {
			return nil, err
		}
		out = append(out, assign{"network.address", netip.PrefixFrom(a, bits).String()})
		if auto == "" || mode == NetworkNone {
			mode = NetworkStatic
		}
	} else {
		if auto == "" {
			mode = NetworkDHCP
		}
		if mask != "" {
			if _, err := netmaskBits(mask, netip.IPv4Unspecified()); err != nil {
				return nil, err
			}
		}
	}
	out = append(out, assign{"network.mode", string(mode)})
	for _, x := range []struct{ name, val string }{{"server address", server}, {"NTP server", ntp}} {
		if x.val != "" { // checked, but nbdroot has no use for it
			if _, err := ipAddrField(x.name, x.val); err != nil {
				return nil, err
			}
		}
	}
	if gw != "" {
		a, err := ipAddrField("gateway", gw)
		if err != nil {
			return nil, err
		}
		out = append(out, assign{"network.gateway", a.String()})
	}
	if host != "" {
		if out, err = addKey(out, "hostname", "network.hostname", host); err != nil {
			return nil, err
		}
	}
	if dev != "" {
		if out, err = addKey(out, "device", "network.interfaces", []string{dev}); err != nil {
			return nil, err
		}
	}
	var dns []string
	for i, d := range []string{dns0, dns1} {
		if d != "" {
			a, err := ipAddrField(fmt.Sprintf("DNS server %d", i), d)
			if err != nil {
				return nil, err
			}
			dns = append(dns, a.String())
		}
	}
	if dns != nil {
		out = append(out, assign{"network.dns", dns})
	}
	return out, nil
}

// netmaskBits turns a dotted netmask or a prefix length into a prefix
// length; with none given it is the client address's class (as the kernel
// does).
func netmaskBits(mask string, client netip.Addr) (int, error) {
	if mask == "" {
		if client.Is6() {
			return 64, nil
		}
		b := client.As4()[0]
		switch {
		case b < 128:
			return 8, nil
		case b < 192:
			return 16, nil
		case b < 224:
			return 24, nil
		}
		return 0, fmt.Errorf("client address %s has no address class; give a netmask", client)
	}
	if n, err := smallInt(mask, 128); err == nil {
		if n > client.BitLen() {
			return 0, fmt.Errorf("prefix length %d is too long for %s", n, client)
		}
		return n, nil
	}
	m, err := netip.ParseAddr(mask)
	if err != nil || !m.Is4() {
		return 0, fmt.Errorf("netmask %q is not a dotted netmask or a prefix length", mask)
	}
	if client.Is6() {
		return 0, fmt.Errorf("netmask %s is IPv4 but the client address %s is IPv6", mask, client)
	}
	b := m.As4()
	u := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for u&(1<<31) != 0 {
		ones++
		u <<= 1
	}
	if u != 0 {
		return 0, fmt.Errorf("netmask %s is not contiguous", mask)
	}
	return ones, nil
}
