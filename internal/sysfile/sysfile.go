// Package sysfile reads the kernel's small files and directories (sysfs
// attributes, the listings of sysfs and of the initramfs) with the fewest
// system calls and into the caller's buffer. Under emulation every system
// call is dear: os.ReadFile's stat and second read, and os.ReadDir's
// values, were half the calls of the boot's sysfs reading.
//
// It imports only x/sys/unix.
package sysfile

import (
	"os"

	"golang.org/x/sys/unix"
)

// AttrMax is the most a sysfs attribute holds: the kernel formats one into
// a page.
const AttrMax = 4096

// ReadAttr reads the file path into buf with an open, reads and a close,
// and returns the part of buf it filled. A sysfs attribute comes whole
// from the first read, so a short read is its end; a longer file is cut
// at len(buf). Errors are *os.PathError.
func ReadAttr(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		short := m < len(buf)-n // the end (0: end of file)
		n += m
		if short {
			break
		}
	}
	return buf[:n], nil
}

// Names lists the open directory fd from its start, without "." and "..",
// reading its entries through buf (any size that holds one entry). The
// listing is whole before it returns, so the caller may then delete what
// it names; fd's offset moves.
func Names(fd int, buf []byte) ([]string, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return names, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// DirNames lists the directory dir as Names does. Errors are
// *os.PathError.
func DirNames(dir string, buf []byte) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	names, err := Names(fd, buf)
	if err != nil {
		return names, &os.PathError{Op: "getdents", Path: dir, Err: err}
	}
	return names, nil
}
