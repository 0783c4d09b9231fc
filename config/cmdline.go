package config

import (
	"errors"
	"fmt"
	"net"
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
func (a karg) joined() string { return a.show(func(s string) string { return s }) }

// field is the argument as error messages show it: NAME or NAME="VALUE".
func (a karg) field() string { return a.show(strconv.Quote) }

// text is the argument as origins show it: quoted only when needed.
func (a karg) text() string {
	if !a.hasVal {
		return quoteIfNeeded(a.name)
	}
	return a.show(quoteIfNeeded)
}

// show returns NAME, or NAME=VALUE with the value written by quote.
func (a karg) show(quote func(string) string) string {
	if !a.hasVal {
		return a.name
	}
	return a.name + "=" + quote(a.val)
}

func quoteIfNeeded(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == '"' || r == '\\' || r >= 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

// isKernelSpace is the kernel's isspace (lib/ctype.c), which includes 0xa0.
func isKernelSpace(c byte) bool { return strings.IndexByte(" \t\n\v\f\r\xa0", c) >= 0 }

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
	quoted := s[0] == '"'
	if quoted {
		s = s[1:]
	}
	i, equals, inQuote := 0, 0, quoted
	for ; i < len(s) && (inQuote || !isKernelSpace(s[i])); i++ {
		if equals == 0 && s[i] == '=' {
			equals = i
		}
		if s[i] == '"' {
			inQuote = !inQuote
		}
	}
	rest := ""
	if i < len(s) {
		rest = s[i+1:]
	}
	// A quote at the end goes if the argument or its value opened with one.
	valQuoted := equals > 0 && equals+1 < i && s[equals+1] == '"'
	end := i
	if (quoted || valQuoted) && i > 0 && s[i-1] == '"' {
		end--
	}
	if equals == 0 {
		return karg{name: s[:end]}, skipSpaces(rest)
	}
	vs := equals + 1
	if valQuoted {
		vs++
	}
	return karg{name: s[:equals], val: s[vs:max(vs, end)], hasVal: true}, skipSpaces(rest)
}

// splitKernel splits a command line as the kernel does: arguments up to a
// bare `--`, and the arguments after it, which go to init.
func splitKernel(cmdline string) (args, initArgs []karg) {
	s, to := skipSpaces(cmdline), &args
	for s != "" {
		var a karg
		switch a, s = nextArg(s); {
		case a.hasVal || a.name != "" && a.name != "--":
			*to = append(*to, a)
		case a.name == "--" && to == &initArgs:
			return args, initArgs // the kernel stops at a second "--" too
		case a.name == "--":
			to = &initArgs
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

// batch collects what one input sets. Its first error sticks and later
// steps add nothing that counts, so a grammar reads as a list of steps
// rather than a ladder of error checks.
type batch struct {
	as  []assign
	err error
}

// fail records err unless an error is already recorded.
func (b *batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// add appends assignments that need no check.
func (b *batch) add(as ...assign) { b.as = append(b.as, as...) }

// set adds what key = v sets, through the key's checks; what, unless
// empty, names the value in an error.
func (b *batch) set(what, key string, v any) {
	as, err := keyIndex()[key].assigns(v)
	if err != nil && what != "" {
		err = fmt.Errorf("%s: %v", what, err)
	}
	b.fail(err)
	b.add(as...)
}

// result returns what the input sets, or its first error.
func (b *batch) result() ([]assign, error) {
	if b.err != nil {
		return nil, b.err
	}
	return b.as, nil
}

// cmdRule says how nbdroot reads a kernel argument: the family it belongs
// to ("" if nbdroot ignores it) and its parser. Within a family the last
// argument wins, as in the kernel; different families that set one key to
// different values are a contradiction. Besides nbdroot.KEY=VALUE and the
// aliases named by Spec's cmdline tags (rootfstype=…), nbdroot reads the
// grammars of nbdroot=, nbddev=, root=, netroot=, ip=, ro and rw.
func cmdRule(a karg) (family string, parse func(*batch)) {
	v := a.val
	switch {
	case a.name == "nbdroot":
		return a.name, func(b *batch) { b.nbdroot(v) }
	case (a.name == "ro" || a.name == "rw") && !a.hasVal: // the kernel only honours bare ro and rw
		return "ro/rw", func(b *batch) { b.set("", "root.read_only", a.name == "ro") }
	case strings.HasPrefix(a.name, "nbdroot."):
		return a.name, func(b *batch) { b.keyArg(a) }
	case !a.hasVal:
		return "", nil
	}
	switch a.name {
	case "nbddev":
		return a.name, func(b *batch) { b.nbdDev(v) }
	case "root", "netroot":
		return a.name, func(b *batch) { b.root(v, a.name == "root") }
	case "ip":
		return a.name, func(b *batch) { b.ip(v) }
	}
	for _, k := range keyTable() {
		if k.alias == a.name {
			return a.name, func(b *batch) { b.set("", k.name, v) }
		}
	}
	return "", nil
}

// keyArg parses nbdroot.KEY=VALUE.
func (b *batch) keyArg(a karg) {
	name := strings.TrimPrefix(a.name, "nbdroot.")
	k, ok := keyIndex()[name]
	switch {
	case !ok:
		b.fail(errors.New(unknownKeyMsg(name, "nbdroot.", append([]string{"config"}, knownKeys()...), nil)))
	case !a.hasVal:
		b.fail(fmt.Errorf("needs a value: nbdroot.%s=VALUE", name))
	default:
		as, err := k.parse(a.val)
		b.fail(err)
		b.add(as...)
	}
}

// target adds the one server s names, parsed as for boot.
func (b *batch) target(s string) {
	t, err := bootTarget(s, 1)
	b.fail(err)
	b.servers(t)
}

// nbdroot parses Debian's nbdroot= value (and nbdroot's URI forms), and
// Debian's HOST,PORT and HOST,NAME,nbdN.
func (b *batch) nbdroot(v string) {
	if !strings.Contains(v, ",") || isURI(v) {
		b.target(v)
		return
	}
	parts := strings.Split(v, ",")
	if len(parts) > 3 {
		b.fail(errors.New("too many commas (want HOST,PORT or HOST,NAME,nbdN)"))
	}
	ep := Endpoint{Port: DefaultPort}
	b.fail(ep.setHost(parts[0]))
	b.fail(ep.setPortOrName(parts[1]))
	b.servers(target{ep: ep})
	if len(parts) == 3 {
		b.nbdDev(parts[2])
	}
}

// nbdDev adds device.index from nbdN or /dev/nbdN.
func (b *batch) nbdDev(s string) {
	n, part, ok := parseDevNbd(s)
	if !ok || part >= 0 {
		b.fail(fmt.Errorf("%q is not an nbd device (want /dev/nbdN)", s))
	}
	b.add(assign{"device.index", int64(n)})
}

// parseDevNbd parses /dev/nbdN[pM] (or nbdN[pM]); part is -1 without pM.
func parseDevNbd(s string) (n, part int, ok bool) {
	rest, isNbd := strings.CutPrefix(strings.TrimPrefix(s, "/dev/"), "nbd")
	num, ps, hasP := strings.Cut(rest, "p")
	n, numOK := smallInt(num, MaxIndex)
	if !hasP {
		return n, -1, isNbd && numOK
	}
	part, partOK := smallInt(ps, MaxPartition)
	return n, part, isNbd && numOK && partOK && part != 0
}

// smallInt parses a decimal number without sign; ok is false unless it is
// one and at most max.
func smallInt(s string, max int) (n int, ok bool) {
	if s == "" || len(s) > 6 || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, _ = strconv.Atoi(s)
	return n, n <= max
}

// root parses root= and netroot=. Values that are not nbdroot's
// (root=/dev/sda1, netroot=iscsi:…) set nothing.
func (b *batch) root(v string, isRoot bool) {
	switch {
	case isURI(v) && (strings.HasPrefix(v, "nbd") || strings.HasPrefix(v, "NBD")):
		b.target(v)
	case strings.HasPrefix(v, "nbd:"):
		b.dracut(v[len("nbd:"):])
	case isRoot && strings.HasPrefix(v, "/dev/nbd"):
		n, part, ok := parseDevNbd(v)
		if !ok {
			b.fail(fmt.Errorf("%q is not an nbd device (want /dev/nbdN or /dev/nbdNpM)", v))
		}
		b.add(assign{"device.index", int64(n)}, assign{"root.partition", int64(max(part, 0))})
	}
}

// dracut parses dracut's SERVER:PORT|NAME[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]]
// (after "nbd:"). SERVER may be a bracketed IPv6 address.
func (b *batch) dracut(v string) {
	host, rest, _ := strings.Cut(v, ":")
	var err error
	switch {
	case strings.HasPrefix(v, "["):
		host, rest, err = cutBracketed(v, ":")
		rest = strings.TrimPrefix(rest, ":")
	case host == "":
		err = errors.New("no server (want nbd:SERVER:PORT|NAME[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]])")
	default:
		host, err = checkHost(host)
	}
	b.fail(err)
	fields := strings.SplitN(rest, ":", 4)
	fields = append(fields, make([]string, 4-len(fields))...)
	portOrName, fstype, flags, opts := fields[0], fields[1], fields[2], fields[3]
	ep := Endpoint{Host: host, Port: DefaultPort}
	b.fail(ep.setPortOrName(portOrName))
	b.servers(target{ep: ep})
	if fstype != "" {
		b.set("root.fstype", "root.fstype", fstype)
	}
	var others []string
	for _, f := range strings.Split(flags, ",") {
		switch f {
		case "ro", "rw":
			b.add(assign{"root.read_only", f == "ro"})
		case "":
		default:
			others = append(others, f)
		}
	}
	if len(others) > 0 {
		b.set("root.flags", "root.flags", strings.Join(others, ","))
	}
	b.nbdOpts(opts)
}

// nbdOpts maps dracut's comma-separated nbd-client options.
func (b *batch) nbdOpts(opts string) {
	for _, o := range strings.Split(opts, ",") {
		name, val, hasVal := strings.Cut(strings.TrimLeft(o, "-"), "=")
		key := map[string]string{"timeout": "device.timeout", "t": "device.timeout", "bs": "device.block_size",
			"block-size": "device.block_size", "b": "device.block_size", "connections": "device.connections", "C": "device.connections"}[name]
		n, err := strconv.ParseInt(val, 10, 64)
		switch what := fmt.Sprintf("NBD option %q", o); {
		case o == "":
		case !hasVal && (name == "ro" || name == "readonly" || name == "r"):
			b.add(assign{"device.read_only", true})
		case !hasVal && (name == "persist" || name == "p" || name == "systemd-mark" || name == "m"):
			// nbdroot always reconnects, and its keeper always survives
			// shutdown's killing spree.
		case !hasVal && (name == "nonetlink" || name == "L"):
			b.add(assign{"device.interface", string(InterfaceIoctl)})
		case !hasVal && (name == "swap" || name == "s"):
			b.add(assign{"device.swap", true})
		case key == "" || !hasVal:
			b.fail(fmt.Errorf("%s is not supported (want ro, persist, systemd-mark, nonetlink, swap, timeout=SECONDS, bs=BYTES or connections=N)", what))
		case err != nil:
			b.fail(fmt.Errorf("%s: %q is not an integer", what, val))
		case key != "device.timeout":
			b.set(what, key, n)
		case n < 0 || n > 1<<31:
			b.fail(fmt.Errorf("%s: %d is out of range", what, n))
		default:
			b.set(what, key, time.Duration(n)*time.Second)
		}
	}
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

// addr parses an address field of ip= (the zero Addr if s is empty); name
// names it in an error.
func (b *batch) addr(name, s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		b.fail(fmt.Errorf("%s %q is not an IP address", name, s))
	}
	return a
}

// ip parses the kernel's ip= (Documentation/admin-guide/nfs/nfsroot.rst):
// CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0, its
// keywords, and dracut's DEVICE:AUTOCONF.
func (b *batch) ip(v string) {
	f := splitIPFields(v)
	_, notMode := autoconf(f[len(f)-1])
	_, notAddr := netip.ParseAddr(strings.Trim(f[0], "[]"))
	switch {
	case len(f) == 1 && f[0] != "" && !strings.ContainsAny(f[0], ".:["): // a keyword: AUTOCONF alone
		f = []string{6: f[0]}
	case len(f) == 2 && f[1] != "" && notMode == nil && notAddr != nil: // dracut's DEVICE:AUTOCONF
		f = []string{5: f[0], 6: f[1]}
	case len(f) > 10:
		b.fail(fmt.Errorf("%d fields; want at most 10 (CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0)", len(f)))
		return
	}
	f = append(f, make([]string, 10-len(f))...)
	client, server, gw, mask, host, dev, auto, dns0, dns1, ntp := f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]
	mode, err := autoconf(auto)
	b.fail(err)
	if client != "" {
		a := b.addr("client address", client)
		if !a.IsValid() {
			return
		}
		bits, err := netmaskBits(mask, a)
		b.fail(err)
		b.add(assign{"network.address", netip.PrefixFrom(a, bits).String()})
		if auto == "" || mode == NetworkNone {
			mode = NetworkStatic
		}
	} else {
		if auto == "" {
			mode = NetworkDHCP
		}
		if mask != "" {
			_, err := netmaskBits(mask, netip.IPv4Unspecified())
			b.fail(err)
		}
	}
	b.add(assign{"network.mode", string(mode)})
	b.addr("server address", server) // checked, but nbdroot has no use for it
	b.addr("NTP server", ntp)
	if a := b.addr("gateway", gw); a.IsValid() {
		b.add(assign{"network.gateway", a.String()})
	}
	if host != "" {
		b.set("hostname", "network.hostname", host)
	}
	if dev != "" {
		b.set("device", "network.interfaces", []string{dev})
	}
	var dns []string
	for i, d := range []string{dns0, dns1} {
		if a := b.addr(fmt.Sprintf("DNS server %d", i), d); a.IsValid() {
			dns = append(dns, a.String())
		}
	}
	if dns != nil {
		b.add(assign{"network.dns", dns})
	}
}

// netmaskBits turns a dotted netmask or a prefix length into a prefix
// length; with none given it is the client address's class (as the kernel
// does).
func netmaskBits(mask string, client netip.Addr) (int, error) {
	if mask == "" {
		if client.Is6() {
			return 64, nil
		}
		for i, end := range []byte{128, 192, 224} { // classes A, B and C
			if client.As4()[0] < end {
				return 8 * (i + 1), nil
			}
		}
		return 0, fmt.Errorf("client address %s has no address class; give a netmask", client)
	}
	if n, ok := smallInt(mask, 128); ok {
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
	ones, size := net.IPMask(m.AsSlice()).Size()
	if size == 0 {
		return 0, fmt.Errorf("netmask %s is not contiguous", mask)
	}
	return ones, nil
}
