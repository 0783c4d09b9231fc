package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"path"

	"golang.org/x/sys/unix"
)

// uevent is one kernel device announcement (NETLINK_KOBJECT_UEVENT, the
// messages udev listens to): "ACTION@DEVPATH", then KEY=VALUE fields, each
// NUL-terminated.
type uevent struct {
	Action    string // add, remove, change, bind, ...
	DevPath   string // the device under /sys, e.g. /devices/pci0000:00/0000:00:03.0/virtio0
	Subsystem string // its bus or class, e.g. virtio
	Modalias  string // MODALIAS, for a device a driver may serve
}

// key is the device's name as Coldplug's sysfs pass keys it: the bus and
// the device's directory under /sys/bus/BUS/devices.
func (e uevent) key() string { return e.Subsystem + "/" + path.Base(e.DevPath) }

// parseUevent decodes one kernel uevent message. It takes what the kernel
// sends (a header "ACTION@DEVPATH" and fields); udev's own messages (the
// "libudev" magic) and anything without a header are refused.
func parseUevent(b []byte) (uevent, error) {
	head, rest, _ := bytes.Cut(b, []byte{0})
	action, devpath, ok := bytes.Cut(head, []byte{'@'})
	if !ok || len(action) == 0 || len(devpath) == 0 || devpath[0] != '/' {
		return uevent{}, fmt.Errorf("uevent: no ACTION@DEVPATH header in %q", truncate(head))
	}
	e := uevent{Action: string(action), DevPath: string(devpath)}
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte{0})
		k, v, ok := bytes.Cut(field, []byte{'='})
		if !ok {
			continue
		}
		switch string(k) {
		case "ACTION":
			e.Action = string(v)
		case "DEVPATH":
			e.DevPath = string(v)
		case "SUBSYSTEM":
			e.Subsystem = string(v)
		case "MODALIAS":
			e.Modalias = string(v)
		}
	}
	return e, nil
}

// truncate shortens a message for an error.
func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// deviceEvents are the devices the kernel announces while Coldplug loads
// drivers: a bus driver's probe adds its devices (virtio_pci adds the
// virtio network card and RNG) and announces each before finit_module(2)
// returns, so after a pass's loads the new devices are known without
// listing sysfs again.
type deviceEvents interface {
	// added returns the devices announced as added since the last call;
	// lost is true when announcements were dropped (the socket's buffer
	// overflowed), and sysfs must be listed again.
	added() (evs []uevent, lost bool)
	close()
}

// ueventRcvbuf is the receive buffer asked for the uevent socket: a boot
// announces a few hundred devices, modules and block devices at most, each
// in a few hundred bytes.
const ueventRcvbuf = 1 << 20

// ueventSocket is a NETLINK_KOBJECT_UEVENT socket on the kernel's group.
type ueventSocket struct {
	fd  int
	buf []byte
}

// openUevents subscribes to the kernel's uevents.
func openUevents() (deviceEvents, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// As root the buffer may exceed rmem_max; otherwise the default stays.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ueventRcvbuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ueventRcvbuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent socket: bind to the kernel's group: %w", err)
	}
	// A uevent is at most UEVENT_BUFFER_SIZE (2 KiB) of fields and its
	// header.
	return &ueventSocket{fd: fd, buf: make([]byte, 8<<10)}, nil
}

// added reads what the socket holds, without waiting. Messages not sent by
// the kernel (a sender's port id other than 0) are passed over.
func (s *ueventSocket) added() ([]uevent, bool) {
	var evs []uevent
	for {
		n, from, err := unix.Recvfrom(s.fd, s.buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return evs, false
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			// ENOBUFS: the buffer overflowed; or the socket broke.
			return evs, true
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		e, err := parseUevent(s.buf[:n])
		if err == nil && e.Action == "add" {
			evs = append(evs, e)
		}
	}
}

func (s *ueventSocket) close() { unix.Close(s.fd) }
