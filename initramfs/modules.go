package initramfs

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nbdroot/nbdroot/kmod"
)

// DefaultModulesDir is where kernel module trees live, one directory per
// kernel version.
const DefaultModulesDir = "/lib/modules"

// Closure is the set of kernel modules an image carries: the modules asked
// for and everything they depend on according to modules.dep.
type Closure struct {
	// KernelVersion is the kernel the modules belong to.
	KernelVersion string
	// Dir is the module tree on the host, MODULESDIR/KVER.
	Dir string
	// Modules are the included modules, in modules.dep order.
	Modules []Module
	// Builtin are the names asked for that are built into the kernel
	// (listed in modules.builtin), canonical and sorted.
	Builtin []string
	// Missing are the optional names that are neither modules nor built in,
	// canonical and sorted.
	Missing []string
}

// Module is one loadable module of a Closure.
type Module struct {
	// Name is the canonical module name (underscores, no suffix).
	Name string
	// Path is the module file relative to the tree, as modules.dep writes
	// it (kernel/fs/ext4/ext4.ko). Compressed modules keep their suffix
	// here; the image holds them uncompressed.
	Path string
	// Deps are the Path of every module this one needs, as listed in
	// modules.dep.
	Deps []string
}

// depFile is a parsed modules.dep.
type depFile struct {
	order  []string            // module paths in file order
	deps   map[string][]string // path → dependency paths
	byName map[string]string   // canonical name → path
}

// parseModulesDep parses a modules.dep file. name is used in errors.
func parseModulesDep(name string, data []byte) (*depFile, error) {
	d := &depFile{deps: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" {
			return nil, fmt.Errorf("%s:%d: malformed line %q (want \"MODULE: DEPS...\")", name, n, line)
		}
		deps := strings.Fields(rest)
		for _, p := range append([]string{mod}, deps...) {
			if err := checkRelPath(p); err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, n, err)
			}
		}
		if _, dup := d.deps[mod]; dup {
			return nil, fmt.Errorf("%s:%d: module %s is listed twice", name, n, mod)
		}
		d.order = append(d.order, mod)
		d.deps[mod] = deps
		// Two files with one module name cannot both load; like modprobe,
		// the first one listed wins.
		if modName := kmod.Name(mod); d.byName[modName] == "" {
			d.byName[modName] = mod
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}

// checkRelPath rejects module paths that would escape the module tree.
func checkRelPath(p string) error {
	if path.IsAbs(p) || !fs.ValidPath(p) {
		return fmt.Errorf("module path %q is not a clean relative path inside the module tree", p)
	}
	return nil
}

// parseBuiltin returns the canonical names listed in a modules.builtin file.
func parseBuiltin(data []byte) map[string]bool {
	names := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			names[kmod.Name(line)] = true
		}
	}
	return names
}

// ModuleClosure computes the modules to carry for kernel kver from the tree
// MODULESDIR/KVER (modulesDir empty means DefaultModulesDir): the named
// modules and, transitively, everything modules.dep says they need.
//
// Names may use '-' or '_' interchangeably. A name that modules.dep does not
// list but modules.builtin does is built into the kernel and needs nothing.
// A required name that is in neither is an error naming it; an optional one
// (the defaults every image carries) is recorded in Closure.Missing. Module
// files are not opened here; a modules.dep entry whose file is absent fails
// when the image is written.
func ModuleClosure(modulesDir, kver string, required, optional []string) (*Closure, error) {
	if modulesDir == "" {
		modulesDir = DefaultModulesDir
	}
	if kver == "" || strings.ContainsRune(kver, '/') || kver == "." || kver == ".." {
		return nil, fmt.Errorf("kernel version %q is not a directory name", kver)
	}
	dir := filepath.Join(modulesDir, kver)
	depPath := filepath.Join(dir, "modules.dep")
	data, err := os.ReadFile(depPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no modules for kernel %s: %w (is the kernel's module package installed, and depmod run?)", kver, err)
		}
		return nil, fmt.Errorf("reading module dependencies: %w", err)
	}
	deps, err := parseModulesDep(depPath, data)
	if err != nil {
		return nil, err
	}
	builtinData, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading built-in module list: %w", err)
	}
	builtin := parseBuiltin(builtinData)

	c := &Closure{KernelVersion: kver, Dir: dir}
	included := map[string]bool{}
	var queue, unknown []string
	seenName := map[string]bool{}
	want := func(name string, isRequired bool) {
		canon := kmod.Canonical(strings.TrimSpace(name))
		if canon == "" || seenName[canon] {
			return
		}
		seenName[canon] = true
		switch p, ok := deps.byName[canon]; {
		case ok:
			if !included[p] {
				included[p] = true
				queue = append(queue, p)
			}
		case builtin[canon]:
			c.Builtin = append(c.Builtin, canon)
		case isRequired:
			unknown = append(unknown, canon)
		default:
			c.Missing = append(c.Missing, canon)
		}
	}
	// Required names first, so that a name in both lists is required.
	for _, n := range required {
		want(n, true)
	}
	for _, n := range optional {
		want(n, false)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("kernel %s has no module %s: not in %s nor built in (modules.builtin)",
			kver, strings.Join(unknown, ", "), depPath)
	}
	// Breadth-first walk; the included set makes cycles harmless.
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, dep := range deps.deps[p] {
			if included[dep] {
				continue
			}
			if _, listed := deps.deps[dep]; !listed {
				return nil, fmt.Errorf("%s: %s depends on %s, which has no entry of its own", depPath, p, dep)
			}
			included[dep] = true
			queue = append(queue, dep)
		}
	}
	for _, p := range deps.order {
		if included[p] {
			c.Modules = append(c.Modules, Module{Name: kmod.Name(p), Path: p, Deps: deps.deps[p]})
		}
	}
	slices.Sort(c.Builtin)
	slices.Sort(c.Missing)
	return c, nil
}

// Names returns the canonical names of the included modules, sorted.
func (c *Closure) Names() []string {
	names := make([]string, len(c.Modules))
	for i, m := range c.Modules {
		names[i] = m.Name
	}
	slices.Sort(names)
	return names
}

// metadataFile is one modules.* file written into the image's module tree.
type metadataFile struct {
	name string
	data []byte
}

// metadata returns the modules.* files of the image's module tree, trimmed
// to the included modules so the image's loader sees a consistent view:
// modules.dep, modules.order, modules.alias and modules.softdep are
// filtered; modules.builtin is copied whole (the kernel is the same).
// Files absent on the host are absent in the image, except modules.dep.
func (c *Closure) metadata() ([]metadataFile, error) {
	byPath := map[string]bool{}
	byName := map[string]bool{}
	for _, m := range c.Modules {
		byPath[m.Path] = true
		byName[m.Name] = true
	}

	// The image holds its modules uncompressed (image.module), so its
	// files name them so.
	inImage := func(p string) string {
		p, _ = kmod.Uncompressed(p)
		return p
	}
	var dep strings.Builder
	for _, m := range c.Modules {
		dep.WriteString(inImage(m.Path) + ":")
		for _, d := range m.Deps {
			dep.WriteString(" " + inImage(d))
		}
		dep.WriteString("\n")
	}
	files := []metadataFile{{"modules.dep", []byte(dep.String())}}

	// keep decides, for one line of a filtered file, whether it stays;
	// edit, if set, rewrites a line that stays.
	filters := []struct {
		name string
		keep func(line string) bool
		edit func(line string) string
	}{
		{"modules.order", func(line string) bool { return byPath[strings.TrimSpace(line)] },
			func(line string) string { return inImage(strings.TrimSpace(line)) + "\n" }},
		{"modules.alias", func(line string) bool {
			f := strings.Fields(line)
			return len(f) == 3 && f[0] == "alias" && byName[kmod.Canonical(f[2])]
		}, nil},
		{"modules.softdep", func(line string) bool {
			f := strings.Fields(line)
			return len(f) >= 2 && f[0] == "softdep" && byName[kmod.Canonical(f[1])]
		}, nil},
		{"modules.builtin", nil, nil},
	}
	for _, f := range filters {
		p := filepath.Join(c.Dir, f.name)
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading module metadata: %w", err)
		}
		if f.keep != nil {
			var out strings.Builder
			for line := range strings.Lines(string(data)) {
				// Comments stay: they say which tool wrote the file.
				switch {
				case strings.HasPrefix(line, "#"):
					out.WriteString(line)
				case f.keep(line) && f.edit != nil:
					out.WriteString(f.edit(line))
				case f.keep(line):
					out.WriteString(line)
				}
			}
			data = []byte(out.String())
		}
		files = append(files, metadataFile{f.name, data})
	}
	return files, nil
}

// NewestKernel returns the newest kernel version that has a module tree
// (a directory with a modules.dep) in modulesDir, comparing versions
// numerically where they are numeric: 6.10.0 is newer than 6.9.12, and
// 6.1.0-56-amd64 newer than 6.1.0-9-amd64. modulesDir empty means
// DefaultModulesDir.
func NewestKernel(modulesDir string) (string, error) {
	if modulesDir == "" {
		modulesDir = DefaultModulesDir
	}
	ents, err := os.ReadDir(modulesDir)
	if err != nil {
		return "", fmt.Errorf("looking for kernel module trees: %w", err)
	}
	var versions []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(modulesDir, e.Name(), "modules.dep")); err == nil {
			versions = append(versions, e.Name())
		}
	}
	if len(versions) == 0 {
		return "", fmt.Errorf("%s: no kernel module tree (no VERSION/modules.dep)", modulesDir)
	}
	return slices.MaxFunc(versions, CompareVersions), nil
}

// CompareVersions orders kernel version strings: runs of digits compare as
// numbers, everything else byte by byte. It returns -1, 0 or +1.
func CompareVersions(a, b string) int {
	for a != "" && b != "" {
		ta, ra := versionToken(a)
		tb, rb := versionToken(b)
		if c := compareTokens(ta, tb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	// One of them ran out: it is the older, unless both did.
	return cmp.Compare(len(a), len(b))
}

// versionToken splits off the leading run of digits or of non-digits.
func versionToken(s string) (tok, rest string) {
	digit := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == digit {
		i++
	}
	return s[:i], s[i:]
}

func compareTokens(a, b string) int {
	if isDigit(a[0]) && isDigit(b[0]) {
		a = strings.TrimLeft(a, "0")
		b = strings.TrimLeft(b, "0")
		if c := cmp.Compare(len(a), len(b)); c != 0 {
			return c
		}
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
