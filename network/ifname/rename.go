package ifname

import (
	"context"
	"errors"
	"path/filepath"
	"sort"

	"github.com/nbdroot/nbdroot/network/rtnl"
)

// ErrLinkUp is the cause of a LinkError for a link that is up: somebody
// brought it up under the name it has, so it keeps it. (Linux before 6.2
// refuses to rename a link that is up; later kernels rename it under its
// user's feet.)
var ErrLinkUp = errors.New("the link is up, and nbdroot renames only links that are down")

// Rename is one link RenameAll renamed.
type Rename struct {
	// Index is the link's interface index.
	Index int
	// Old is the kernel's name, New the predictable one.
	Old, New string
}

// RenameAll gives every link listed in class/net below opts.Root the name
// the root's udev would give it by default (see the package documentation),
// through rtnetlink in the calling thread's
// network namespace, in the order of their kernel names. It renames what it
// can: a link that is up, or that fails to rename, is a *LinkError in the
// returned error (all joined), and the others are still renamed. It returns
// the renames done. The caller checks Disabled first.
func RenameAll(ctx context.Context, opts Options) ([]Rename, error) {
	s, err := opts.sysfs()
	if err != nil {
		return nil, err
	}
	names, err := readDirNames(filepath.Join(s.root, "class/net"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	c := &rtnl.Conn{} // one socket for every link's requests
	defer c.Close()
	var done []Rename
	var errs []error
	for _, old := range names {
		if err := ctx.Err(); err != nil {
			return done, errors.Join(append(errs, err)...)
		}
		r, err := s.rename(c, old)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r != (Rename{}) {
			done = append(done, r)
		}
	}
	return done, errors.Join(errs...)
}

// rename renames one link through c if udev would; a zero Rename means it
// would not.
func (s sysfs) rename(c *rtnl.Conn, old string) (Rename, error) {
	name, err := s.predictable(old)
	if err != nil {
		return Rename{}, &LinkError{Link: old, Err: err}
	}
	if name == old {
		return Rename{}, nil
	}
	link, err := c.LinkByName(old)
	if err != nil {
		return Rename{}, &LinkError{Link: old, New: name, Err: err}
	}
	if link.Up() {
		return Rename{}, &LinkError{Link: old, New: name, Err: ErrLinkUp}
	}
	if err := c.SetName(link.Index, name); err != nil {
		return Rename{}, &LinkError{Link: old, New: name, Err: err}
	}
	return Rename{Index: link.Index, Old: old, New: name}, nil
}

// Names maps the kernel names of renamed links to their new names, so that
// a configuration written with either name finds the link.
type Names map[string]string

// NewNames collects the renames RenameAll did.
func NewNames(renames []Rename) Names {
	n := make(Names, len(renames))
	for _, r := range renames {
		n[r.Old] = r.New
	}
	return n
}

// Resolve returns the current name of the link a configuration calls
// configured (`ip=…:eth0:…`, `network.interfaces = ["ens3"]`): the new name
// when configured is the kernel name of a renamed link, configured itself
// when it is one of the new names. ok is false when configured was not
// involved in a rename; it is then returned as it stands.
func (n Names) Resolve(configured string) (current string, ok bool) {
	if v, ok := n[configured]; ok {
		return v, true
	}
	for _, v := range n {
		if v == configured {
			return v, true
		}
	}
	return configured, false
}
