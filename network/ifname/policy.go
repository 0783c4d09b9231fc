package ifname

import (
	"fmt"
	"strings"

	"github.com/nbdroot/nbdroot/config"
)

// How the kernel says a link got its name: /sys/class/net/X/name_assign_type
// (NET_NAME_* in linux/netdevice.h). Reading it fails for NET_NAME_UNKNOWN.
const (
	nameEnum        = 1 // eth%d: udev renames these
	namePredictable = 2 // the kernel's own stable name: udev keeps it
	nameUser        = 3 // named by userspace: udev keeps it
	nameRenamed     = 4 // renamed by userspace: udev keeps it
)

// iffLoopback is IFF_LOOPBACK; udev applies no .link file to loopback.
const iffLoopback = 0x8

// ifNameSize is IFNAMSIZ: a name and its terminating NUL.
const ifNameSize = 16

// LinkError says which link could not be named, and why.
type LinkError struct {
	// Link is the link's current name.
	Link string
	// New is the name it was to get; empty if that was not known yet.
	New string
	// Err is the cause.
	Err error
}

// Error formats the error as "naming LINK: ERR" or "renaming LINK to NEW: ERR".
func (e *LinkError) Error() string {
	if e.New != "" {
		return fmt.Sprintf("renaming %s to %s: %v", e.Link, e.New, e.Err)
	}
	return fmt.Sprintf("naming %s: %v", e.Link, e.Err)
}

// Unwrap returns the cause.
func (e *LinkError) Unwrap() error { return e.Err }

// predictable is link_generate_new_name with 99-default.link's policy.
func (s sysfs) predictable(name string) (string, error) {
	dev, err := s.netDevice(name)
	if err != nil {
		return "", err
	}
	if flags, err := parseUnsigned(s.optAttr(dev, "flags"), 0, 32); err == nil && flags&iffLoopback != 0 {
		return name, nil
	}
	// NamePolicy=keep kernel: names given by userspace or predictable
	// kernel names stay.
	switch t, _ := parseUnsigned(s.optAttr(dev, "name_assign_type"), 10, 32); t {
	case namePredictable, nameUser, nameRenamed:
		return name, nil
	}
	ids, err := s.netID(dev)
	if err != nil {
		return "", err
	}
	// NamePolicy=… database onboard slot path: the first valid one.
	for _, n := range []string{ids.Onboard, ids.Slot, ids.Path} {
		if validIfName(n) {
			return n, nil
		}
	}
	return name, nil
}

// validIfName is systemd's ifname_valid: what the kernel accepts as a name.
func validIfName(s string) bool {
	if s == "" || len(s) >= ifNameSize || s == "." || s == ".." || allDigits(s) {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 127 || c == ':' || c == '/' {
			return false
		}
	}
	return true
}

// cmdlineKey is the kernel command-line switch for predictable names.
const cmdlineKey = "net.ifnames"

// Disabled reports whether the kernel command line turns predictable names
// off for udev: net.ifnames= with a false value (0, no, n, false, f, off, in
// any case). As systemd reads it, the last net.ifnames= with a value counts,
// a bare `net.ifnames` or a value it cannot parse leaves names on, and
// words after `--` count too.
func Disabled(cmdline string) bool {
	args, initArgs := config.SplitCmdline(cmdline)
	val := "" // neither absent nor empty turns names off
	for _, w := range append(args, initArgs...) {
		if v, ok := strings.CutPrefix(w, cmdlineKey+"="); ok {
			val = v
		}
	}
	switch strings.ToLower(val) {
	case "0", "no", "n", "false", "f", "off":
		return true
	}
	return false
}
