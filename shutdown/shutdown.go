// Package shutdown is the last step of nbdroot's story: handing the root
// back. It owns the exitrd, the small root that systemd-shutdown returns to
// at the very end (the convention dracut uses, systemd's INITRD_INTERFACE):
//
//   - Install, called by PID 1 of the initramfs before switch_root, makes
//     /run/initramfs a usable root: the nbdroot binary as /run/initramfs/nbdroot,
//     /run/initramfs/shutdown linked to it, and the mount points systemd binds
//     /proc, /sys, /dev and /run onto. It is the initramfs's own binary, not
//     a copy (a directory of the initramfs bound onto /run/initramfs), and
//     the keeper runs from it: the exitrd costs no memory beyond the binary
//     PID 1 was started from, which the keeper needs anyway.
//   - Run is /shutdown: systemd-shutdown, after its final remount of the root
//     read-only, pivots into /run/initramfs with the old root at /oldroot and
//     executes /shutdown VERB as PID 1. Run unmounts the old root, flushes
//     each NBD device and disconnects it (the kernel sends NBD_CMD_DISC), and
//     Reboot then reboots, powers off, halts or kexecs as asked.
//   - FreeInitramfs deletes the initramfs's files but the exitrd's stage
//     once the root is switched to: the root's keeper calls it when the
//     root's init runs, or PID 1 just before (boot.SwitchRoot).
//
// It imports bootlog and internal/sysfile; nothing imports it but boot (Install, FreeInitramfs),
// keeper (FreeInitramfs) and cmd/nbdroot (Run).
package shutdown

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/bootlog"
)

// Dir is the exitrd: systemd-shutdown pivots into it when Dir/shutdown is
// executable.
const Dir = "/run/initramfs"

// Binary is the name of the nbdroot binary inside Dir, and Program the
// name systemd-shutdown executes.
const (
	Binary  = "nbdroot"
	Program = "shutdown"
)

// mountPoints are the directories systemd-shutdown binds the API file
// systems onto inside the exitrd, and where it puts the old root.
func mountPoints() []string { return []string{"proc", "sys", "dev", "run", "oldroot"} }

// Stage is where PID 1 builds the exitrd on the initramfs itself before
// binding it onto Dir (see Install); switch_root must leave it when it
// frees the initramfs.
const Stage = "/.exitrd"

// Exitrd is an installed exitrd.
type Exitrd struct {
	// Binary is the exitrd's nbdroot, which the keeper is started from.
	Binary string
	// Copied, when not nil, says why Binary is a copy of the executable
	// rather than the executable itself.
	Copied error
}

// Install makes dir (Dir outside tests) an exitrd: the executable at self as
// dir/nbdroot, dir/shutdown linked to it, and the mount points.
//
// The exitrd is built in stage, a directory on self's file system, around
// a hard link of self, and stage is bound onto dir: the exitrd, the keeper
// and PID 1 then share one file, and no copy is made (a copy costs the
// binary's size in memory until switch_root frees the initramfs, and the
// time to write it). systemd leaves a mount on /run/initramfs alone until
// it pivots into it (its mount units call it extrinsic, and its final
// unmount loop skips it). Where that cannot be done (stage is "" or on
// another file system, or binding fails) dir gets a copy of self, and
// Copied says why.
func Install(dir, stage, self string) (Exitrd, error) {
	x := Exitrd{Binary: filepath.Join(dir, Binary), Copied: errors.New("no stage")}
	if stage != "" {
		x.Copied = populate(stage, func(dst string) error { return os.Link(self, dst) })
		if x.Copied == nil {
			err := bind(stage, dir)
			if err == nil {
				return x, nil
			}
			x.Copied = &Error{Op: "install", Path: dir, Err: fmt.Errorf("bind %s: %w", stage, err)}
		}
		// Its link would keep the binary beside the copy.
		_ = os.RemoveAll(stage)
	}
	if err := populate(dir, func(dst string) error { return copyFile(self, dst) }); err != nil {
		return Exitrd{}, err
	}
	return x, nil
}

// populate makes dir an exitrd whose nbdroot is made by put (given a
// temporary name, renamed over any earlier one: a retried boot installs
// again).
func populate(dir string, put func(dst string) error) error {
	for _, m := range mountPoints() {
		if err := os.MkdirAll(filepath.Join(dir, m), 0o755); err != nil {
			return &Error{Op: "install", Path: dir, Err: err}
		}
	}
	dst := filepath.Join(dir, Binary)
	tmp := dst + ".tmp"
	_ = os.Remove(tmp)
	if err := put(tmp); err != nil {
		os.Remove(tmp)
		return &Error{Op: "install", Path: dst, Err: err}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return &Error{Op: "install", Path: dst, Err: err}
	}
	link := filepath.Join(dir, Program)
	_ = os.Remove(link)
	if err := os.Symlink(Binary, link); err != nil {
		return &Error{Op: "install", Path: link, Err: err}
	}
	return nil
}

// bind binds stage onto dir, unless it is there already.
func bind(stage, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var a, b unix.Stat_t
	if unix.Stat(stage, &a) == nil && unix.Stat(dir, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
		return nil
	}
	return unix.Mount(stage, dir, "", unix.MS_BIND, "")
}

// copyFile copies src to dst, executable.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// IsProgram reports whether argv[0] names the exitrd's program, as
// systemd-shutdown executes it ("/shutdown").
func IsProgram(argv0 string) bool { return filepath.Base(argv0) == Program }

// Verb is what systemd-shutdown asks for, as its argv[1].
type Verb string

// The verbs of systemd-shutdown.
const (
	VerbReboot   Verb = "reboot"
	VerbPoweroff Verb = "poweroff"
	VerbHalt     Verb = "halt"
	VerbKexec    Verb = "kexec"
)

// ParseVerb checks s against the verbs systemd-shutdown passes. "exit"
// (a container's) powers off, as systemd-shutdown itself does on a host.
func ParseVerb(s string) (Verb, error) {
	switch v := Verb(s); v {
	case VerbReboot, VerbPoweroff, VerbHalt, VerbKexec:
		return v, nil
	case "exit":
		return VerbPoweroff, nil
	}
	return "", &Error{Op: "verb", Path: s, Err: errors.New("want reboot, poweroff, halt or kexec")}
}

// rebootCmd is the reboot(2) command of v.
func (v Verb) rebootCmd() int {
	switch v {
	case VerbReboot:
		return unix.LINUX_REBOOT_CMD_RESTART
	case VerbHalt:
		return unix.LINUX_REBOOT_CMD_HALT
	case VerbKexec:
		return unix.LINUX_REBOOT_CMD_KEXEC
	}
	return unix.LINUX_REBOOT_CMD_POWER_OFF
}

// Reboot does what v says. It returns only on failure; a kexec with no
// kernel loaded falls back to a reboot, as systemd-shutdown's does.
func Reboot(v Verb) error {
	unix.Sync()
	err := unix.Reboot(v.rebootCmd())
	if v == VerbKexec {
		err = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	return &Error{Op: string(v), Err: err}
}

// Options configure Run.
type Options struct {
	// OldRoot is where systemd-shutdown left the old root ("/oldroot").
	OldRoot string
	// Mountinfo is the mount table to read ("/proc/self/mountinfo").
	Mountinfo string
	// Devices lists the attached NBD devices to detach, in order.
	Devices func() ([]int, error)
	// Detach flushes device N, disconnects it (NBD_CMD_DISC reaches the
	// server) and waits for its keeper to exit.
	Detach func(ctx context.Context, index int) error
	// Log gets one line per step.
	Log *bootlog.Logger
}

// Run detaches the old root: it unmounts every mount under OldRoot, deepest
// first (lazily when a mount is still busy), syncs, then detaches each NBD
// device. Every step is tried even when one fails; the errors are joined.
func Run(ctx context.Context, o Options) error {
	var errs []error
	mounts, err := mountsUnder(o.Mountinfo, o.OldRoot)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range mounts {
		err := unix.Unmount(m, 0)
		if errors.Is(err, unix.EBUSY) {
			o.Log.Printf("shutdown", "%s is busy; detaching it lazily", m)
			err = unix.Unmount(m, unix.MNT_DETACH)
		}
		if err != nil {
			errs = append(errs, &Error{Op: "unmount", Path: m, Err: err})
		}
	}
	unix.Sync()
	o.Log.Printf("shutdown", "old root unmounted (%d mounts)", len(mounts))
	devs, err := o.Devices()
	if err != nil {
		errs = append(errs, err)
	}
	for _, i := range devs {
		t := time.Now()
		if err := o.Detach(ctx, i); err != nil {
			errs = append(errs, err)
			continue
		}
		o.Log.Printf("shutdown", "nbd%d flushed and disconnected in %.2fs", i, time.Since(t).Seconds())
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at root or below it in the mount
// table file, deepest (and, among equals, latest mounted) first: the order
// in which they can be unmounted.
func mountsUnder(mountinfo, root string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, &Error{Op: "read mounts", Path: mountinfo, Err: err}
	}
	defer f.Close()
	root = filepath.Clean(root)
	var out []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeOctal(fields[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			out = append(out, mp)
		}
	}
	if err := s.Err(); err != nil {
		return nil, &Error{Op: "read mounts", Path: mountinfo, Err: err}
	}
	// Later mounts stack on earlier ones at the same point: reverse first,
	// then a stable sort by depth keeps that order among equals.
	slices.Reverse(out)
	slices.SortStableFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out, nil
}

// unescapeOctal undoes mountinfo's \ooo escapes (space, tab, newline, \).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			// Three octal digits, at most \377.
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Error is a failed step of the exitrd, with the path or device it
// concerned.
type Error struct {
	Op   string // "install", "unmount", "detach", a verb
	Path string
	Err  error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return "shutdown: " + e.Op + ": " + e.Err.Error()
	}
	return fmt.Sprintf("shutdown: %s %s: %v", e.Op, e.Path, e.Err)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }
