// Package kmod loads kernel modules from the running kernel's module tree
// the way udev and modprobe would, and owns the rule for spelling a module
// name. The boot loads nbd, the present devices' drivers and the root's
// filesystem with it, attach loads nbd, and initramfs writes the names the
// same way.
//
// It may import bootlog, u-root's kmodule and x/sys/unix.
package kmod

import (
	"bufio"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// Modules loads kernel modules from /lib/modules/$(uname -r) the way udev
// and modprobe would, but only what this boot needs:
//
//   - by name (nbd, boot.modules, the root's filesystem), with the
//     dependencies from modules.dep and the soft dependencies from
//     modules.softdep (ext4 needs "crypto-crc32c", which modules.dep does
//     not say);
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
	log      *bootlog.Logger
	prober   *kmodule.Prober
	aliases  []moduleAlias
	softdeps map[string][]string

	mu     sync.Mutex
	tried  map[string]bool
	loaded int
}

type moduleAlias struct{ pattern, module string }

// New reads the module index of the running kernel. Without one (a
// kernel with everything built in) every load is a no-op.
func New(log *bootlog.Logger) *Modules {
	m := &Modules{log: log, softdeps: map[string][]string{}, tried: map[string]bool{}}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		log.Errorf("modules", "uname: %v", err)
		return m
	}
	kver := unix.ByteSliceToString(uts.Release[:])
	p, err := kmodule.NewProber(kmodule.ProbeOpts{KVer: kver})
	if err != nil {
		log.Printf("modules", "no module index for %s (%v); relying on built-in drivers", kver, err)
		return m
	}
	m.prober = p
	dir := filepath.Join("/lib/modules", kver)
	eachLine(filepath.Join(dir, "modules.alias"), func(f []string) {
		if len(f) == 3 && f[0] == "alias" {
			m.aliases = append(m.aliases, moduleAlias{Canonical(f[1]), Canonical(f[2])})
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
	if m.prober == nil || depth > 8 || !m.try(name) {
		return
	}
	for _, pre := range m.softdeps[name] {
		m.load(pre, depth+1)
	}
	err := m.prober.Probe(name, "")
	switch {
	case err == nil:
		m.mu.Lock()
		m.loaded++
		m.mu.Unlock()
		m.log.Debugf("modules", "%s loaded", name)
		return
	case errors.Is(err, unix.ENODEV):
		// No such hardware (crc32c_intel without SSE4.2): expected.
		m.log.Debugf("modules", "%s: %v", name, err)
		return
	case !strings.Contains(err.Error(), "could not find module path"):
		m.log.Errorf("modules", "%s: %v", name, err)
		return
	}
	// Not a module of the image: maybe an alias.
	for _, a := range m.aliases {
		if ok, _ := path.Match(a.pattern, name); ok {
			m.load(a.module, depth+1)
		}
	}
}

// Coldplug loads the drivers for the devices present, pass after pass, since
// a bus driver (virtio_pci) reveals new devices (virtio net, rng).
func (m *Modules) Coldplug() {
	for pass := 0; pass < 4; pass++ {
		before := m.triedCount()
		for _, alias := range modaliases() {
			alias = Canonical(alias)
			for _, a := range m.aliases {
				if ok, _ := path.Match(a.pattern, alias); ok {
					m.load(a.module, 0)
				}
			}
		}
		if m.triedCount() == before {
			return
		}
	}
}

func (m *Modules) triedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tried)
}

// modaliases returns the modalias of every device on every bus.
func modaliases() []string {
	files, _ := filepath.Glob("/sys/bus/*/devices/*/modalias")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && len(b) > 1 {
			out = append(out, strings.TrimSpace(string(b)))
		}
	}
	return out
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
