package ifname

import (
	"cmp"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/internal/sysfile"
)

// DefaultRoot is where sysfs is mounted when Options.Root is empty.
const DefaultRoot = "/sys"

// Options says where to read the machine's devices from.
type Options struct {
	// Root is the sysfs mount point; empty means DefaultRoot.
	Root string
}

// sysfs reads devices the way sd-device does, below one root.
type sysfs struct {
	root string // symlinks resolved, so device paths can be compared with it
}

func (o Options) sysfs() (sysfs, error) {
	real, err := filepath.EvalSymlinks(cmp.Or(o.Root, DefaultRoot))
	if err != nil {
		return sysfs{}, err
	}
	return sysfs{root: real}, nil
}

// device is one sysfs device directory, symlinks resolved.
type device string

// netDevice returns the device of the network link called name.
func (s sysfs) netDevice(name string) (device, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return "", &os.PathError{Op: "open", Path: filepath.Join(s.root, "class/net", name), Err: os.ErrNotExist}
	}
	p, err := filepath.EvalSymlinks(filepath.Join(s.root, "class/net", name))
	return device(p), err
}

// attr reads a sysfs attribute of d, without its trailing newlines, as
// sd_device_get_sysattr_value does.
func (s sysfs) attr(d device, name string) (string, error) {
	b, err := sysfile.ReadAttr(filepath.Join(string(d), name), make([]byte, sysfile.AttrMax))
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// optAttr reads an attribute that may be missing or unreadable (the kernel
// answers EOPNOTSUPP for phys_port_name on most drivers); it returns "" then.
func (s sysfs) optAttr(d device, name string) string {
	v, _ := s.attr(d, name)
	return v
}

// decimalAttr reads d's attribute name as a decimal number: 0 when it does
// not parse, and has false when d has no readable attribute name.
func (s sysfs) decimalAttr(d device, name string) (n uint64, has bool) {
	v, err := s.attr(d, name)
	n, perr := parseUnsigned(v, 10, 64)
	if perr != nil {
		n = 0 // not ParseUint's largest value for one out of range
	}
	return n, err == nil
}

// subsystem returns the name of d's subsystem, or "" if it has none.
func (s sysfs) subsystem(d device) string {
	l, err := os.Readlink(filepath.Join(string(d), "subsystem"))
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// sysname is the device's name, the last element of its path.
func (d device) sysname() string { return filepath.Base(string(d)) }

// parent returns the nearest ancestor directory that is a device (has a
// uevent file), as sd_device_get_parent does, or false at the top.
func (s sysfs) parent(d device) (device, bool) {
	p := string(d)
	for {
		up := filepath.Dir(p)
		if up == p || !strings.HasPrefix(up, s.root+"/") {
			return "", false
		}
		p = up
		var st unix.Stat_t
		if unix.Stat(filepath.Join(p, "uevent"), &st) == nil {
			return device(p), true
		}
	}
}

// ancestorIn returns the nearest ancestor of d in subsystem sub, as
// sd_device_get_parent_with_subsystem_devtype does.
func (s sysfs) ancestorIn(d device, sub string) (device, bool) {
	for {
		p, ok := s.parent(d)
		if !ok {
			return "", false
		}
		if s.subsystem(p) == sub {
			return p, true
		}
		d = p
	}
}

// child resolves the symlink name inside d to the device it points at.
func (s sysfs) child(d device, name string) (device, error) {
	p, err := filepath.EvalSymlinks(filepath.Join(string(d), name))
	return device(p), err
}

// devtype returns the DEVTYPE from d's uevent file, or "".
func (s sysfs) devtype(d device) string {
	for _, line := range strings.Split(s.optAttr(d, "uevent"), "\n") {
		if v, ok := strings.CutPrefix(line, "DEVTYPE="); ok {
			return v
		}
	}
	return ""
}

// readDirNames lists dir in the order the file system returns it (on sysfs,
// the order udev reads it in).
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
