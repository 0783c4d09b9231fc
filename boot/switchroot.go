package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/shutdown"
)

// FindInit returns the init to run inside newRoot: want if set, else the
// first of the kernel's candidates (in its order) that exists. Symbolic
// links are followed inside newRoot, so an absolute link such as
// /sbin/init -> /lib/systemd/systemd is checked where it will point after
// switch_root. Checking before switch_root matters: afterwards the
// initramfs is gone and a missing init can only panic the kernel.
func FindInit(newRoot, want string) (string, error) {
	cands := []string{"/sbin/init", "/etc/init", "/bin/init", "/bin/sh"}
	if want != "" {
		cands = []string{want}
	}
	for _, c := range cands {
		if executableIn(newRoot, c) {
			return c, nil
		}
	}
	if want != "" {
		return "", fmt.Errorf("init=%s is not an executable file in the root", want)
	}
	return "", fmt.Errorf("no init in the root (tried %s); set init=", strings.Join(cands, ", "))
}

// executableIn reports whether path, resolved inside root, is an executable
// regular file.
func executableIn(root, path string) bool {
	p, err := resolveIn(root, path)
	if err != nil {
		return false
	}
	fi, err := os.Stat(filepath.Join(root, p))
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// resolveIn resolves path component by component as if root were /:
// absolute symlinks restart at root, and ".." never climbs above it.
func resolveIn(root, path string) (string, error) {
	resolved := "/"
	rest := strings.Split(path, "/")
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if hops++; hops > 40 {
			return "", unix.ELOOP
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return resolved, nil
}

// SwitchRoot makes newRoot the root and executes init there as PID 1: it
// moves /dev, /proc, /sys and /run into newRoot, moves newRoot onto /,
// chroots and execs. With free it first deletes the initramfs's files but
// the exitrd's stage (shutdown.FreeInitramfs) to give their memory back;
// without, the root's keeper does that once init runs, off the boot's
// path. An API mount whose mount point is missing and cannot be made (a
// read-only root without /run) is detached instead, as util-linux's
// switch_root does. It returns only on failure, and log says what was
// detached.
func SwitchRoot(log *bootlog.Logger, newRoot, init string, args, env []string, free bool) error {
	for _, m := range apiMounts() {
		dst := filepath.Join(newRoot, m.target)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			log.Errorf("switch_root", "%s has no %s (%v); detaching it", newRoot, m.target, err)
			_ = unix.Unmount(m.target, unix.MNT_DETACH)
			continue
		}
		if err := unix.Mount(m.target, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s to %s: %w", m.target, dst, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", newRoot, err)
	}
	if free {
		// Before the move hides the initramfs.
		if old, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			shutdown.FreeInitramfs(old)
			unix.Close(old)
		}
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	argv := append([]string{init}, args...)
	err := unix.Exec(init, argv, env)
	return fmt.Errorf("exec %s: %w", init, err)
}
