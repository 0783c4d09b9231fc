package shutdown

import (
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/internal/sysfile"
)

// Freed is what FreeInitramfs deleted.
type Freed struct {
	// Files is how many files went (directories not counted).
	Files int
	// Bytes is the size of the files whose last link went: the memory
	// given back. A file still linked from Stage (the nbdroot binary,
	// /init) keeps its pages.
	Bytes int64
}

// FreeInitramfs deletes the files of the initramfs whose root directory is
// open as dirfd, except Stage (the exitrd), and says what went. An
// initramfs is RAM that nothing else gives back, so switch_root frees it
// (util-linux's and systemd's alike); nbdroot's root keeper does it once
// the root's init runs (keeper), or PID 1 before it executes the init when
// no keeper will.
//
// Only files on the initramfs itself go: an entry on another file system
// (a mount point: the API file systems, the root) is passed over, and so
// are errors, since what cannot be deleted only costs memory. dirfd stays
// open.
func FreeInitramfs(dirfd int) Freed {
	var st unix.Stat_t
	if unix.Fstat(dirfd, &st) != nil {
		return Freed{}
	}
	f := freer{dev: st.Dev, buf: make([]byte, 8<<10)}
	f.tree(dirfd, strings.TrimPrefix(Stage, "/"))
	return f.freed
}

// freer deletes one file system's part of a tree.
type freer struct {
	dev   uint64 // the initramfs's device
	buf   []byte // getdents(2)'s buffer, shared by every level
	freed Freed
}

// tree removes everything under the directory dirfd that lives on f.dev,
// except its entry named keep ("" keeps nothing).
func (f *freer) tree(dirfd int, keep string) {
	names, _ := sysfile.Names(dirfd, f.buf) // whole before anything goes
	for _, name := range names {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		if st.Dev != f.dev || name == keep {
			continue // a mount point, or kept: not ours to delete
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			sub, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			f.tree(sub, "")
			unix.Close(sub)
			_ = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
			continue
		}
		if unix.Unlinkat(dirfd, name, 0) != nil {
			continue
		}
		f.freed.Files++
		if st.Nlink == 1 && st.Mode&unix.S_IFMT == unix.S_IFREG {
			f.freed.Bytes += st.Size
		}
	}
}
