package network

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// networkdDirs are where systemd-networkd looks for .network files, in the
// order a file name is looked up (the first one found wins; /run is empty
// before switch_root).
func networkdDirs() []string {
	return []string{"etc/systemd/network", "run/systemd/network", "usr/local/lib/systemd/network", "usr/lib/systemd/network", "lib/systemd/network"}
}

// nmDirs mark a root that has NetworkManager.
func nmDirs() []string {
	return []string{"etc/NetworkManager", "usr/lib/NetworkManager", "usr/sbin/NetworkManager"}
}

// Handoff file names, relative to /run.
const (
	networkdDropIn = "50-nbdroot-root.conf"
	nmConfig       = "NetworkManager/conf.d/90-nbdroot-root.conf"
)

// Handoff writes, under run (PID 1's /run, which switch_root moves into
// the new root), the files that make the network stacks of the root
// mounted at root leave lease's link alone (see the package doc): a
// KeepConfiguration=yes drop-in for each of the root's .network files that
// could match the link, and a NetworkManager configuration that leaves the
// link unmanaged if the root has NetworkManager. It returns the files
// written, relative to run.
func Handoff(root, run string, lease *Lease) ([]string, error) {
	if lease.Interface == "" {
		return nil, nil
	}
	var written []string
	files, err := networkFiles(root)
	if err != nil {
		return nil, &Error{Op: "hand-off", Err: err}
	}
	for _, f := range files {
		if !f.mayMatch(lease) {
			continue
		}
		rel := filepath.Join("systemd/network", f.name+".d", networkdDropIn)
		body := fmt.Sprintf("# Written by nbdroot: %s carries the root file system (NBD).\n"+
			"# Keep its address and routes when systemd-networkd starts, restarts or stops.\n"+
			"[Network]\nKeepConfiguration=yes\n", lease.Interface)
		if err := writeUnder(run, rel, body, "hand-off"); err != nil {
			return written, err
		}
		written = append(written, rel)
	}
	if slices.ContainsFunc(nmDirs(), func(p string) bool { _, err := os.Stat(filepath.Join(root, p)); return err == nil }) {
		match := "interface-name:" + lease.Interface
		if lease.HardwareAddr != "" {
			match += ";mac:" + lease.HardwareAddr
		}
		body := fmt.Sprintf("# Written by nbdroot: %s carries the root file system (NBD); its\n"+
			"# address and lease are kept by nbdroot's keeper, so NetworkManager leaves it alone.\n"+
			"[keyfile]\nunmanaged-devices+=%s\n", lease.Interface, match)
		if err := writeUnder(run, nmConfig, body, "hand-off"); err != nil {
			return written, err
		}
		written = append(written, nmConfig)
	}
	return written, nil
}

// writeUnder writes body to dir/rel, making its directories; op names the
// step in the error.
func writeUnder(dir, rel, body, op string) error {
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return &Error{Op: op, Err: err}
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		return &Error{Op: op, Err: err}
	}
	return nil
}

// networkFile is the [Match] section of one .network file.
type networkFile struct {
	name  string              // file name, "10-eth.network"
	match map[string][]string // key → values, as networkd accumulates them
}

// networkFiles reads the .network files of the root at root, one per
// name as networkd picks them, skipping masked ones (linked to /dev/null).
func networkFiles(root string) ([]networkFile, error) {
	seen := map[string]bool{}
	var out []networkFile
	for _, dir := range networkdDirs() {
		ents, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			continue // no such directory
		}
		for _, e := range ents {
			name := e.Name()
			if !strings.HasSuffix(name, ".network") || seen[name] {
				continue
			}
			seen[name] = true
			b, masked, err := readInRoot(root, path.Join(dir, name))
			if err != nil {
				return nil, err
			}
			if masked {
				continue
			}
			out = append(out, networkFile{name: name, match: parseMatch(b)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// readInRoot reads rel inside root, resolving a symbolic link to an
// absolute path inside root (one level, as unit files are linked), and
// reports a link to /dev/null or an empty file as masked.
func readInRoot(root, rel string) ([]byte, bool, error) {
	p := filepath.Join(root, rel)
	if target, err := os.Readlink(p); err == nil {
		if target == "/dev/null" {
			return nil, true, nil
		}
		if filepath.IsAbs(target) {
			p = filepath.Join(root, target)
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, false, err
	}
	return b, len(bytes.TrimSpace(b)) == 0, nil
}

// parseMatch returns the [Match] section of a .network file: each key's
// values, space-separated words accumulated over its lines, an empty
// assignment clearing them, as networkd reads them.
func parseMatch(b []byte) map[string][]string {
	m := map[string][]string{}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			in = line == "[Match]"
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !in || !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if v == "" {
			m[k] = []string{}
			continue
		}
		m[k] = append(m[k], strings.Fields(v)...)
	}
	return m
}

// mayMatch reports whether f could apply to lease's link. Keys that cannot
// be judged from the lease (Driver=, Path=, Property=, Host=, ...) count as
// matching: a drop-in too many costs nothing, one too few loses the root.
func (f networkFile) mayMatch(lease *Lease) bool {
	for k, vs := range f.match {
		if len(vs) == 0 {
			continue
		}
		var ok bool
		switch k {
		case "Name", "OriginalName":
			ok = globList(vs, lease.Interface)
		case "MACAddress", "PermanentMACAddress":
			ok = lease.HardwareAddr == "" || slices.ContainsFunc(vs, func(v string) bool { return strings.EqualFold(v, lease.HardwareAddr) })
		case "Type":
			ok = globList(vs, "ether")
		default:
			ok = true
		}
		if !ok {
			return false
		}
	}
	return true
}

// globList matches s against a networkd list of shell globs, which a
// leading "!" inverts as a whole.
func globList(vs []string, s string) bool {
	first, invert := strings.CutPrefix(vs[0], "!")
	hit := slices.ContainsFunc(append([]string{first}, vs[1:]...), func(v string) bool {
		ok, _ := path.Match(v, s)
		return ok
	})
	return hit != invert
}
