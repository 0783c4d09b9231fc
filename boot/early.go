package boot

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// apiMount is one of the API filesystems PID 1 mounts first.
type apiMount struct {
	target, fstype, data string
	flags                uintptr
}

// apiMounts are the API filesystems PID 1 needs before anything else;
// switchRoot moves the same list into the new root.
func apiMounts() []apiMount {
	return []apiMount{
		{"/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
		{"/run", "tmpfs", "mode=0755,size=10%", unix.MS_NOSUID | unix.MS_NODEV},
	}
}

// MountEarly mounts /proc, /sys, /dev and /run. A filesystem that is already
// mounted there (a retried boot, or the kernel's devtmpfs) is left alone:
// mounting again would stack an empty one over it (losing /run's files).
func MountEarly() error {
	var root unix.Stat_t
	if err := unix.Stat("/", &root); err != nil {
		return fmt.Errorf("stat /: %w", err)
	}
	for _, m := range apiMounts() {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		var st unix.Stat_t
		if unix.Stat(m.target, &st) == nil && st.Dev != root.Dev {
			continue // a mount point already
		}
		err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// SetupConsole makes fds 0, 1 and 2 the console when the kernel could not
// (an initramfs without /dev/console opens nothing for init).
func SetupConsole() error {
	if _, err := unix.FcntlInt(1, unix.F_GETFD, 0); err == nil {
		return nil
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("console: open /dev/console: %w", err)
	}
	for _, target := range []int{0, 1, 2} {
		if err := unix.Dup3(fd, target, 0); err != nil {
			return fmt.Errorf("console: dup to fd %d: %w", target, err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}
