package boot

import (
	"fmt"
	"strings"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/config"
)

// LoadModules loads config.BaseModules and extra, with their dependencies,
// through modules.dep under /lib/modules/$(uname -r). A module that is absent
// from the image or built into the kernel is not an error; one that is present
// and fails to load is logged and skipped, and the step that needs it (attach,
// network, mount) reports the failure in its own terms.
func LoadModules(log *Logger, extra []string) (loaded int, err error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return 0, fmt.Errorf("modules: uname: %w", err)
	}
	kver := unix.ByteSliceToString(uts.Release[:])
	p, err := kmodule.NewProber(kmodule.ProbeOpts{KVer: kver})
	if err != nil {
		// No modules.dep at all: a kernel with everything built in.
		log.Printf("modules", "no module index for %s (%v); relying on built-in drivers", kver, err)
		return 0, nil
	}
	for _, name := range append(config.BaseModules(), extra...) {
		err := p.Probe(name, "")
		switch {
		case err == nil:
			loaded++
		case strings.Contains(err.Error(), "could not find module path"):
			log.Debugf("modules", "%s: not in this initramfs", name)
		default:
			log.Errorf("modules", "%s: %v", name, err)
		}
	}
	return loaded, nil
}
