// Package kmod loads kernel modules from the running kernel's module tree
// the way udev and modprobe would, and owns the rule for spelling a module
// name. The boot loads nbd, the present devices' drivers and the root's
// filesystem with it, attach loads nbd, and initramfs writes the names the
// same way.
//
// It reads modules.dep, modules.alias, modules.softdep and modules.builtin
// as depmod wrote them, and inserts with finit_module(2), as kmod's
// modprobe does: the kernel reads the file itself, so a module costs no
// copy through this process's heap (under emulation a copy and the garbage
// it leaves cost more than the kernel's own work). A compressed module
// (.ko.xz, .ko.zst, .ko.gz) is given to the kernel to decompress
// (MODULE_INIT_COMPRESSED_FILE, Linux 6.4), or read through ReadModule for
// an older kernel; images carry their modules uncompressed.
//
// It may import bootlog, internal/sysfile and x/sys/unix.
package kmod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/internal/sysfile"
)

// Modules loads kernel modules from /lib/modules/$(uname -r) the way udev
// and modprobe would, but only what this boot needs:
//
//   - by name (nbd, boot.modules, the root's filesystem), with the
//     dependencies from modules.dep and the soft dependencies from
//     modules.softdep (ext4 needs "crypto-crc32c", which modules.dep does
//     not say); of the modules an alias names, one that lists the CPU
//     features it needs is skipped on a CPU without them;
//   - by device (Coldplug): every modalias under /sys/bus matched against
//     modules.alias, so only the NIC, virtio and RNG drivers of the hardware
//     present are loaded. Loading every driver in the image costs seconds
//     under emulation.
//
// A name that is neither a module in the image nor an alias is skipped: it
// may be built in, or not needed on this machine.
//
// A Modules is safe for concurrent use, so that a module the root will need
// can load while the network step waits.
type Modules struct {
	log *bootlog.Logger
	// dir is the module tree (/lib/modules/VERSION); empty when there is
	// none, and every load is a no-op.
	dir string
	// sys is the sysfs Coldplug reads ("/sys").
	sys string
	// insert puts one module file into the kernel.
	insert func(file string) error

	paths    map[string]string   // module name → its file, relative to dir
	deps     map[string][]string // module name → modules.dep's files
	builtin  map[string]bool
	aliases  []moduleAlias
	softdeps map[string][]string
	// cpuAliases are the modules' aliases over the CPU's modalias
	// ("cpu:type:x86,...:feature:*0094*", MODULE_DEVICE_TABLE(x86cpu)),
	// by module; cpu is the CPU's modalias, read when first needed ("" if
	// there is none).
	cpuAliases map[string][]moduleAlias
	cpu        func() string
	// events subscribes to the kernel's device announcements for
	// Coldplug (nil: sysfs is listed after each pass).
	events func() (deviceEvents, error)

	mu    sync.Mutex
	tried map[string]bool
	// inserted holds each module file's insertion by file, done once
	// for every caller (sync.OnceValue).
	inserted map[string]func() error
	loaded   int
}

// moduleAlias is one line of modules.alias: a glob over modaliases and
// the module that serves them.
type moduleAlias struct {
	pattern, module string
	// literal is the pattern up to its first glob character: a modalias
	// without this prefix cannot match, and most are told so by a string
	// comparison instead of path.Match.
	literal string
}

// newAlias returns the alias of pattern for module.
func newAlias(pattern, module string) moduleAlias {
	lit := pattern
	if i := strings.IndexAny(pattern, `*?[\`); i >= 0 {
		lit = pattern[:i]
	}
	return moduleAlias{pattern: pattern, module: module, literal: lit}
}

// matches reports whether the modalias (or module alias) name matches a.
func (a moduleAlias) matches(name string) bool {
	if !strings.HasPrefix(name, a.literal) {
		return false
	}
	ok, _ := path.Match(a.pattern, name)
	return ok
}

// New reads the module index of the running kernel. Without one (a
// kernel with everything built in) every load is a no-op.
func New(log *bootlog.Logger) *Modules {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		log.Errorf("modules", "uname: %v", err)
		return open(log, "", "/sys", nil)
	}
	kver := unix.ByteSliceToString(uts.Release[:])
	for _, d := range []string{"/lib/modules", "/usr/lib/modules"} {
		dir := filepath.Join(d, kver)
		if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err != nil {
			continue
		}
		m := open(log, dir, "/sys", finit)
		m.events = openUevents
		eachLine("/proc/modules", func(f []string) {
			if len(f) > 0 {
				if file, ok := m.paths[Canonical(f[0])]; ok {
					m.inserted[file] = func() error { return nil }
				}
			}
		})
		return m
	}
	log.Printf("modules", "no module index for %s (no modules.dep in /lib/modules or /usr/lib/modules); relying on built-in drivers", kver)
	return open(log, "", "/sys", nil)
}

// open reads the module tree at dir (none when empty); insert puts one
// module file into the kernel. It is New's seam for tests.
func open(log *bootlog.Logger, dir, sys string, insert func(string) error) *Modules {
	m := &Modules{log: log, dir: dir, sys: sys, insert: insert,
		paths: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{},
		softdeps: map[string][]string{}, tried: map[string]bool{}, inserted: map[string]func() error{},
		cpuAliases: map[string][]moduleAlias{}}
	m.cpu = sync.OnceValue(func() string {
		b, _ := os.ReadFile(filepath.Join(sys, "devices/system/cpu/modalias"))
		return Canonical(strings.TrimSpace(string(b)))
	})
	if dir == "" {
		return m
	}
	eachLine(filepath.Join(dir, "modules.dep"), func(f []string) {
		if len(f) == 0 || !strings.HasSuffix(f[0], ":") {
			return
		}
		file := strings.TrimSuffix(f[0], ":")
		name := Name(file)
		m.paths[name], m.deps[name] = file, f[1:]
	})
	eachLine(filepath.Join(dir, "modules.builtin"), func(f []string) {
		if len(f) == 1 {
			m.builtin[Name(f[0])] = true
		}
	})
	eachLine(filepath.Join(dir, "modules.alias"), func(f []string) {
		if len(f) == 3 && f[0] == "alias" {
			a := newAlias(Canonical(f[1]), Canonical(f[2]))
			m.aliases = append(m.aliases, a)
			if strings.HasPrefix(a.pattern, "cpu:") {
				m.cpuAliases[a.module] = append(m.cpuAliases[a.module], a)
			}
		}
	})
	eachLine(filepath.Join(dir, "modules.softdep"), func(f []string) {
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		mod := Canonical(f[1])
		pre := false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					m.softdeps[mod] = append(m.softdeps[mod], w)
				}
			}
		}
	})
	return m
}

// Name is the name of the module in file: its base name without .ko and
// a compression suffix, spelled as the kernel does.
func Name(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return Canonical(base)
}

// Loaded returns how many modules were loaded so far.
func (m *Modules) Loaded() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loaded
}

// try reports whether name is new, and marks it tried.
func (m *Modules) try(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tried[name] {
		return false
	}
	m.tried[name] = true
	return true
}

// Load loads each name (a module name or an alias) and what it needs.
func (m *Modules) Load(names ...string) {
	for _, n := range names {
		m.load(n, 0)
	}
}

func (m *Modules) load(name string, depth int) {
	name = Canonical(name)
	if m.dir == "" || depth > 8 || !m.try(name) {
		return
	}
	for _, pre := range m.softdeps[name] {
		m.load(pre, depth+1)
	}
	if m.builtin[name] {
		m.log.Debugf("modules", "%s is built in", name)
		return
	}
	file, ok := m.paths[name]
	if !ok {
		// Not a module of the image: maybe an alias.
		for _, a := range m.aliases {
			if a.matches(name) && m.forThisCPU(a.module) {
				m.load(a.module, depth+1)
			}
		}
		return
	}
	t := time.Now()
	err := m.insertWithDeps(name, file)
	switch {
	case err == nil:
		m.mu.Lock()
		m.loaded++
		m.mu.Unlock()
		m.log.Debugf("modules", "%s loaded in %.3fs", name, time.Since(t).Seconds())
	case errors.Is(err, unix.ENODEV):
		// No such hardware (crc32c_intel without SSE4.2): expected.
		m.log.Debugf("modules", "%s: %v", name, err)
	default:
		m.log.Errorf("modules", "%s: %v", name, err)
	}
}

// forThisCPU reports whether module, one of several an alias names
// (crypto-crc32c: crc32c_intel and crc32c_generic), can serve this CPU: a
// module that lists the CPUs it drives (aliases over the CPU's modalias,
// by feature) and matches none of them would only fail with ENODEV after
// the kernel has read and linked it (0.06 s for crc32c_intel on QEMU's
// default CPU, which lacks SSE4.2). A module without such aliases, or a
// CPU without a modalias, is loaded as modprobe would.
func (m *Modules) forThisCPU(module string) bool {
	cpuAliases := m.cpuAliases[module]
	cpu := ""
	if len(cpuAliases) > 0 {
		cpu = m.cpu()
	}
	if cpu == "" {
		return true
	}
	for _, a := range cpuAliases {
		if a.matches(cpu) {
			return true
		}
	}
	m.log.Debugf("modules", "%s: not for this CPU (none of its CPU features)", module)
	return false
}

// insertWithDeps inserts the dependencies modules.dep gives name, last
// first as modprobe does (depmod lists a module's dependencies before
// theirs), then file.
func (m *Modules) insertWithDeps(name, file string) error {
	deps := m.deps[name]
	for i := len(deps) - 1; i >= 0; i-- {
		if err := m.insertOnce(deps[i]); err != nil {
			return fmt.Errorf("dependency %s: %w", Name(deps[i]), err)
		}
	}
	return m.insertOnce(file)
}

// insertOnce inserts file unless it is in the kernel already; callers that
// race for the same file wait for the first one's result.
func (m *Modules) insertOnce(file string) error {
	m.mu.Lock()
	in, ok := m.inserted[file]
	if !ok {
		in = sync.OnceValue(func() error {
			err := m.insert(filepath.Join(m.dir, file))
			if errors.Is(err, unix.EEXIST) {
				return nil
			}
			return err
		})
		m.inserted[file] = in
	}
	m.mu.Unlock()
	return in()
}

// moduleInitCompressedFile is finit_module's flag for a compressed module
// file (Linux 6.4); x/sys/unix does not name it.
const moduleInitCompressedFile = 4

// decompressTimeout bounds decompressing one module for an older kernel.
const decompressTimeout = time.Minute

// finit inserts the module in file with finit_module(2). A compressed file
// goes to the kernel's own decompressor, or, when the kernel has none for
// it, through ReadModule and init_module(2).
func finit(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, compressed := Uncompressed(file); !compressed {
		return unix.FinitModule(int(f.Fd()), "", 0)
	}
	err = unix.FinitModule(int(f.Fd()), "", moduleInitCompressedFile)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), decompressTimeout)
	defer cancel()
	image, err := ReadModule(ctx, file)
	if err != nil {
		return err
	}
	return unix.InitModule(image, "")
}

// coldplugPasses bounds Coldplug: a bus driver that reveals a bus whose
// driver reveals another is as deep as hardware goes.
const coldplugPasses = 4

// Coldplug loads the drivers for the devices present, pass after pass, since
// a bus driver (virtio_pci) reveals new devices (virtio net, rng). The first
// pass reads every device's modalias under /sys/bus; a later one takes the
// devices the kernel announced (uevents) while the last pass's drivers
// loaded, and lists sysfs again only when there is no uevent socket or
// announcements were lost. (Listing the buses again cost 0.03-0.11 s a
// pass under emulation, and reading every device's modalias again,
// through sysfs's symlinks, about 0.3 s.)
func (m *Modules) Coldplug() {
	var ev deviceEvents
	if m.events != nil {
		var err error
		if ev, err = m.events(); err != nil {
			m.log.Debugf("modules", "%v; listing sysfs after each pass instead", err)
		} else {
			defer ev.close()
		}
	}
	seen := map[string]bool{}
	fresh := m.newModaliases(seen)
	for pass := 1; ; pass++ {
		before := m.triedCount()
		for _, alias := range fresh {
			alias = Canonical(alias)
			for _, a := range m.aliases {
				if a.matches(alias) {
					m.load(a.module, 0)
				}
			}
		}
		m.log.Debugf("modules", "coldplug pass %d: %d new device aliases, %d devices", pass, len(fresh), len(seen))
		if m.triedCount() == before || pass == coldplugPasses {
			return
		}
		fresh = m.appeared(ev, seen)
	}
}

// appeared returns the modalias of each device added since the last pass
// and not in seen, and adds those devices to seen: from ev, or from sysfs
// when there is no ev or it lost announcements.
func (m *Modules) appeared(ev deviceEvents, seen map[string]bool) []string {
	if ev != nil {
		evs, lost := ev.added()
		if !lost {
			var out []string
			for _, e := range evs {
				if k := e.key(); !seen[k] {
					seen[k] = true
					if e.Modalias != "" {
						out = append(out, e.Modalias)
					}
				}
			}
			return out
		}
		m.log.Debugf("modules", "device announcements were lost; listing sysfs again")
	}
	return m.newModaliases(seen)
}

func (m *Modules) triedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tried)
}

// newModaliases returns the modalias of every device under /sys/bus/*/devices
// that is not in seen, and adds those devices to seen. It lists and reads
// through one buffer (package sysfile): under emulation a pass over a
// hundred devices through os.ReadDir and os.ReadFile (a stat and a heap
// buffer per file) took 1.3-3x as long.
func (m *Modules) newModaliases(seen map[string]bool) []string {
	buf := make([]byte, 8<<10)
	var out []string
	buses, _ := sysfile.DirNames(filepath.Join(m.sys, "bus"), buf)
	for _, bus := range buses {
		dir := filepath.Join(m.sys, "bus", bus, "devices")
		devs, _ := sysfile.DirNames(dir, buf)
		for _, d := range devs {
			key := bus + "/" + d
			if seen[key] {
				continue
			}
			seen[key] = true
			if a := readModalias(dir+"/"+d+"/modalias", buf); a != "" {
				out = append(out, a)
			}
		}
	}
	return out
}

// readModalias returns the device's modalias from file, "" if it has none;
// buf is only borrowed.
func readModalias(file string, buf []byte) string {
	b, err := sysfile.ReadAttr(file, buf)
	if err != nil || len(b) <= 1 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Canonical returns the kernel's spelling of a module name: modprobe treats
// '-' and '_' alike, and the kernel uses '_'.
func Canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

// eachLine calls fn with the fields of each line of a file, if it exists.
func eachLine(file string, fn func([]string)) {
	f, err := os.Open(file)
	if err != nil {
		return
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fn(strings.Fields(s.Text()))
	}
}
