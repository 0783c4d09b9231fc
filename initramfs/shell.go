package initramfs

import (
	"path"
	"path/filepath"
	"strings"
)

// ShellPath is where a shell other than BusyBox goes in the image: the
// first place boot's failure policy looks for one.
const ShellPath = "/bin/sh"

// BusyboxPath is where a BusyBox binary goes in the image.
const BusyboxPath = "/bin/busybox"

// NbdrootLink is the link that puts nbdroot on the rescue shell's PATH; it
// points at /init.
const NbdrootLink = "/bin/nbdroot"

// BusyboxApplets are the applets linked to BusyBox in /bin: what an
// operator needs to look around a failed boot (files, mounts, modules,
// network, processes, the kernel log). BusyBox's own shell runs any other
// applet by name too; Debian's busybox-static has all of these.
func BusyboxApplets() []string {
	return []string{
		"ash", "cat", "chmod", "cp", "cut", "dd", "df", "dmesg", "du", "echo",
		"env", "free", "grep", "gunzip", "gzip", "head", "hexdump", "hostname",
		"ifconfig", "insmod", "ip", "kill", "less", "ln", "ls", "lsmod", "mkdir",
		"mknod", "modprobe", "more", "mount", "mv", "nc", "nslookup", "ping",
		"ps", "pwd", "readlink", "rm", "rmdir", "route", "sed", "sleep", "sort",
		"stat", "sync", "tail", "tar", "tee", "top", "touch", "tr", "umount",
		"uname", "vi", "wc", "wget", "which",
	}
}

// IsBusybox reports whether the shell at src is taken for BusyBox: its file
// name starts with "busybox" (busybox, busybox-static, busybox.static).
func IsBusybox(src string) bool { return strings.HasPrefix(filepath.Base(src), "busybox") }

// addShell plans the rescue shell src. BusyBox goes to BusyboxPath with
// ShellPath and the BusyboxApplets linked to it (an applet link gives way
// to an extra file at the same path); any other shell goes to ShellPath.
// With linkInit, NbdrootLink points at /init.
func (im *image) addShell(src string, linkInit bool) error {
	if err := checkStatic("shell", src, "use a static shell such as /bin/busybox from busybox-static"); err != nil {
		return err
	}
	dst := ShellPath
	if IsBusybox(src) {
		dst = BusyboxPath
	}
	e, err := im.hostFile(src, dst, 0o755, "the shell")
	if err != nil {
		return err
	}
	r := &im.report
	r.Shell, r.ShellPath, r.ShellSize = src, dst, e.size
	if dst == BusyboxPath {
		target := path.Base(BusyboxPath)
		if err := im.symlink(ShellPath, target, "the shell"); err != nil {
			return err
		}
		dir := path.Dir(BusyboxPath)
		for _, a := range BusyboxApplets() {
			name, _ := imagePath(path.Join(dir, a))
			if _, taken := im.entries[name]; taken {
				continue
			}
			if err := im.symlink("/"+name, target, "busybox applet "+a); err != nil {
				return err
			}
		}
	}
	if linkInit {
		// Relative, so that it also resolves in an unpacked copy.
		return im.symlink(NbdrootLink, "../init", "the shell's nbdroot")
	}
	return nil
}
