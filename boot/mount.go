package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/internal/poll"
	"github.com/nbdroot/nbdroot/keeper"
	"github.com/nbdroot/nbdroot/nbddev"
)

// NewRoot is where the root is mounted before switch_root.
const NewRoot = "/newroot"

// RootDevice returns the block device holding the root, /dev/nbdN or
// /dev/nbdNpM, once its node exists. Partitions show up after the kernel
// rescans the table, which opening the whole device triggers.
func RootDevice(ctx context.Context, index int, r config.Root) (string, error) {
	whole := nbddev.Path(index)
	dev := whole
	if r.Partition > 0 {
		dev += "p" + strconv.Itoa(r.Partition)
	}
	const timeout = 5 * time.Second
	var statErr error
	err := poll.For(ctx, timeout, 10*time.Millisecond, func() (bool, error) {
		if _, statErr = os.Stat(dev); statErr == nil || !errors.Is(statErr, os.ErrNotExist) {
			return statErr == nil, statErr
		}
		if f, err := os.Open(whole); err == nil {
			f.Close()
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("%s did not appear within %v: %w", dev, timeout, statErr)
	}
	return dev, nil
}

// DetectFS returns the filesystem type of dev from its superblock. It does
// not need the filesystem's module: the result says which module to load.
func DetectFS(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, fsProbeSize)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("%s: read superblock: %w", dev, err)
	}
	if t := fsFromSuperblock(buf[:n]); t != "" {
		return t, nil
	}
	return "", fmt.Errorf("%s: no known filesystem signature (ext2/3/4, xfs, btrfs, squashfs, erofs); set rootfstype=", dev)
}

// fsProbeSize covers every signature fsFromSuperblock looks at.
const fsProbeSize = 0x10040 + 8

// fsFromSuperblock names the filesystem whose signature starts b, or "".
// ext2 and ext3 are mounted by the ext4 driver.
func fsFromSuperblock(b []byte) string {
	at := func(off int, magic string) bool {
		return len(b) >= off+len(magic) && string(b[off:off+len(magic)]) == magic
	}
	switch {
	case at(0x438, "\x53\xef"):
		return "ext4"
	case at(0, "XFSB"):
		return "xfs"
	case at(0, "hsqs"):
		return "squashfs"
	case at(0x10040, "_BHRfS_M"):
		return "btrfs"
	case at(0x400, "\xe2\xe1\xf5\xe0"):
		return "erofs"
	}
	return ""
}

// MountRoot mounts dev, a filesystem of type fstype, on NewRoot as r says:
// rootflags, ro or rw, and, with overlay "tmpfs", a tmpfs upper layer over a
// read-only lower mount so that many clients can share one export.
func MountRoot(log *bootlog.Logger, dev, fstype string, r config.Root) error {
	unmountLeftovers()
	overlay := r.Overlay == config.OverlayTmpfs
	flags, data := mountOptions(r.Flags)
	if r.ReadOnly || overlay {
		flags |= unix.MS_RDONLY
	}
	target, mode := NewRoot, "rw"
	if r.ReadOnly {
		mode = "ro"
	}
	if overlay {
		// The layers live under /run, which moves into the new root, so an
		// operator finds them at /run/nbdroot/{lower,overlay} afterwards.
		target = filepath.Join(keeper.DefaultRunDir, "lower")
		mode += ", tmpfs overlay"
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, target, fstype, flags, data); err != nil {
		return fmt.Errorf("%s on %s as %s (flags %q): %w", dev, target, fstype, r.Flags, err)
	}
	if overlay {
		if err := mountOverlay(target, r.ReadOnly); err != nil {
			_ = unix.Unmount(target, 0)
			return err
		}
	}
	log.Printf("mount", "%s (%s, %s) on %s", dev, fstype, mode, NewRoot)
	return nil
}

// unmountLeftovers detaches what an earlier attempt of this boot mounted
// (a retry from the rescue shell); on a first attempt there is nothing.
func unmountLeftovers() {
	for _, p := range []string{NewRoot, filepath.Join(keeper.DefaultRunDir, "lower"), filepath.Join(keeper.DefaultRunDir, "overlay")} {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}

// mountOverlay mounts a tmpfs-backed overlay of lower on NewRoot.
func mountOverlay(lower string, ro bool) error {
	up := filepath.Join(keeper.DefaultRunDir, "overlay")
	if err := os.MkdirAll(up, 0o755); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if err := unix.Mount("nbdroot-overlay", up, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("overlay: tmpfs on %s: %w", up, err)
	}
	for _, p := range []string{filepath.Join(up, "upper"), filepath.Join(up, "work"), NewRoot} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("overlay: %w", err)
		}
	}
	var flags uintptr
	if ro {
		flags = unix.MS_RDONLY
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, up, up)
	if err := unix.Mount("overlay", NewRoot, "overlay", flags, opts); err != nil {
		return fmt.Errorf("overlay %s on %s: %w", opts, NewRoot, err)
	}
	return nil
}

// mountOptions splits rootflags as mount(8) does: the generic options
// become MS_* flags, the rest is the filesystem's data string. ro and rw are
// left to the spec's ReadOnly (config folds them in).
func mountOptions(opts string) (flags uintptr, data string) {
	generic := map[string]struct {
		set, clear uintptr
	}{ // the no-ops, the pairs of opposites, and those without one
		"defaults": {}, "ro": {}, "rw": {},
		"noatime": {set: unix.MS_NOATIME}, "atime": {clear: unix.MS_NOATIME},
		"nodiratime": {set: unix.MS_NODIRATIME}, "diratime": {clear: unix.MS_NODIRATIME},
		"relatime": {set: unix.MS_RELATIME}, "norelatime": {clear: unix.MS_RELATIME},
		"lazytime": {set: unix.MS_LAZYTIME}, "nolazytime": {clear: unix.MS_LAZYTIME},
		"nosuid": {set: unix.MS_NOSUID}, "suid": {clear: unix.MS_NOSUID},
		"nodev": {set: unix.MS_NODEV}, "dev": {clear: unix.MS_NODEV},
		"noexec": {set: unix.MS_NOEXEC}, "exec": {clear: unix.MS_NOEXEC},
		"sync": {set: unix.MS_SYNCHRONOUS}, "async": {clear: unix.MS_SYNCHRONOUS},
		"silent": {set: unix.MS_SILENT}, "loud": {clear: unix.MS_SILENT},
		"mand": {set: unix.MS_MANDLOCK}, "nomand": {clear: unix.MS_MANDLOCK},
		"strictatime": {set: unix.MS_STRICTATIME}, "dirsync": {set: unix.MS_DIRSYNC},
	}
	var rest []string
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		if g, ok := generic[o]; ok {
			flags = flags&^g.clear | g.set
			continue
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ",")
}
