package keeper

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockMemory keeps the keeper out of swap, for a device that holds swap
// (device.swap, nbd-client's -swap): a keeper whose pages went out to the
// swap it serves would, at its next reconnect, wait on the device it is
// there to bring back.
//
//   - mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) locks every page the
//     keeper has and every page it faults in later. MCL_ONFAULT leaves
//     alone what the Go runtime reserves and never touches (its 32 MiB
//     arena index, tables in .bss): without it, mlockall would make all
//     of that resident.
//   - The executable's own mappings are then made resident and locked
//     whole (mlock), so that no code path, however rare (a reconnect, a
//     TLS handshake, a DHCP rebinding), needs a page of the binary that
//     was never touched: the binary lives in tmpfs, which swaps too.
//
// Locked pages cannot be given back either: the Go runtime's madvise on
// them fails, so the heap keeps its high-water mark (debug.FreeOSMemory
// does nothing). That is the price nbd-client's -swap pays too.
//
// It returns the bytes of the executable it locked.
func lockMemory() (int, error) {
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		return 0, &os.SyscallError{Syscall: "mlockall", Err: err}
	}
	spans, err := executableMappings()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range spans {
		// A raw syscall: the range is the executable's own mapping, not a
		// Go object, so it is passed as the address it is.
		if _, _, errno := unix.Syscall(unix.SYS_MLOCK, s.start, s.end-s.start, 0); errno != 0 {
			return n, &os.SyscallError{Syscall: fmt.Sprintf("mlock %#x-%#x", s.start, s.end), Err: errno}
		}
		n += int(s.end - s.start)
	}
	return n, nil
}

// mapping is one address range of /proc/self/maps.
type mapping struct{ start, end uintptr }

// executableMappings returns the ranges of /proc/self/maps that map this
// process's executable (matched by device and inode, since the keeper's
// root is not the root its path was resolved in).
func executableMappings() ([]mapping, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: "/proc/self/exe", Err: err}
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	spans, err := parseMaps(b, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	if err != nil {
		return nil, fmt.Errorf("/proc/self/maps: %w", err)
	}
	if len(spans) == 0 {
		return nil, fmt.Errorf("/proc/self/maps: no mapping of the executable (device %d:%d, inode %d)", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	}
	return spans, nil
}

// parseMaps returns the ranges of a /proc/PID/maps text that map the file
// with inode ino on device major:minor. A line is
// "START-END PERMS OFFSET MAJOR:MINOR INODE [PATH]", numbers in hex but
// the inode, in decimal.
func parseMaps(b []byte, major, minor uint32, ino uint64) ([]mapping, error) {
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			return nil, fmt.Errorf("line %q: want at least 5 fields", sc.Text())
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		devMajor, devMinor, ok2 := strings.Cut(f[3], ":")
		if !ok || !ok2 {
			return nil, fmt.Errorf("line %q: bad range or device", sc.Text())
		}
		inode, err := strconv.ParseUint(f[4], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: inode: %w", sc.Text(), err)
		}
		maj, err1 := strconv.ParseUint(devMajor, 16, 32)
		mnr, err2 := strconv.ParseUint(devMinor, 16, 32)
		start, err3 := strconv.ParseUint(lo, 16, 64)
		end, err4 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || end < start {
			return nil, fmt.Errorf("line %q: bad range or device", sc.Text())
		}
		if inode == ino && uint32(maj) == major && uint32(mnr) == minor {
			out = append(out, mapping{uintptr(start), uintptr(end)})
		}
	}
	return out, sc.Err()
}
