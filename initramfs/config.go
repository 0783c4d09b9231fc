package initramfs

import (
	"fmt"
	"os"

	"github.com/nbdroot/nbdroot/config"
)

// loadSpec resolves the spec file that goes into the image, so that a
// broken spec fails now rather than at boot, and so that the files it names
// are known. The check is partial: the kernel command line may still name
// the server. Spec errors stay *config.Error (they name the file and line).
func loadSpec(path string) (*config.Spec, error) {
	res, err := config.Resolve(config.Sources{ConfigPath: path, ReadFile: os.ReadFile, Partial: true})
	if err != nil {
		return nil, fmt.Errorf("checking the config file: %w", err)
	}
	return &res.Spec, nil
}
