package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdroot/nbdroot/bootlog"
	"golang.org/x/sys/unix"
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
// moves /dev, /proc, /sys and /run into newRoot, deletes the initramfs's
// files to give their memory back, moves newRoot onto /, chroots and execs.
// An API mount whose mount point is missing and cannot be made (a read-only
// root without /run) is detached instead, as util-linux's switch_root does.
// keep, if not empty, is a top-level directory of the initramfs that is
// not deleted (the exitrd's stage, shutdown.Stage). It returns only on
// failure, and log says what was detached.
func SwitchRoot(log *bootlog.Logger, newRoot, init string, args, env []string, keep string) error {
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
	old, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /: %w", err)
	}
	// Free the initramfs before the move hides it. Only files on the
	// initramfs itself go: deleteTree does not cross into other mounts.
	var st unix.Stat_t
	if err := unix.Fstat(old, &st); err == nil {
		deleteTree(old, st.Dev, strings.TrimPrefix(keep, "/"))
	}
	unix.Close(old)
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
	err = unix.Exec(init, argv, env)
	return fmt.Errorf("exec %s: %w", init, err)
}

// deleteTree removes everything under the directory dirfd that lives on the
// device dev, except its entry named keep. Errors are ignored: what cannot
// be deleted only costs memory.
func deleteTree(dirfd int, dev uint64, keep string) {
	// Readdirnames on a dup, so closing it does not close dirfd.
	dup, err := unix.Dup(dirfd)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(dup), "")
	names, _ := f.Readdirnames(-1)
	f.Close()
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if st.Dev != dev || name == keep {
			continue // a mount point (e.g. /newroot), or kept: not ours to delete
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			sub, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			deleteTree(sub, dev, "")
			unix.Close(sub)
			_ = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
			continue
		}
		_ = unix.Unlinkat(dirfd, name, 0)
	}
}
