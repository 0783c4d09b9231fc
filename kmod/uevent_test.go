package kmod

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// virtioNetAdd is what the kernel announces when virtio_pci's probe adds
// the network card (captured from the rig's guest, SEQNUM trimmed).
const virtioNetAdd = "add@/devices/pci0000:00/0000:00:02.0/virtio0\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio0\x00" +
	"SUBSYSTEM=virtio\x00MODALIAS=virtio:d00000001v00001AF4\x00SEQNUM=1041\x00"

func TestParseUevent(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		want uevent
		bad  bool
	}{
		{"device add", virtioNetAdd, uevent{Action: "add", DevPath: "/devices/pci0000:00/0000:00:02.0/virtio0", Subsystem: "virtio", Modalias: "virtio:d00000001v00001AF4"}, false},
		{"fields win over the header", "add@/devices/x\x00ACTION=remove\x00DEVPATH=/devices/y\x00", uevent{Action: "remove", DevPath: "/devices/y"}, false},
		{"no modalias", "add@/devices/virtual/net/lo\x00ACTION=add\x00SUBSYSTEM=net\x00INTERFACE=lo\x00", uevent{Action: "add", DevPath: "/devices/virtual/net/lo", Subsystem: "net"}, false},
		{"a field without =, and no final NUL", "bind@/devices/z\x00junk\x00SUBSYSTEM=pci", uevent{Action: "bind", DevPath: "/devices/z", Subsystem: "pci"}, false},
		{"value with =", "add@/d\x00MODALIAS=of:Nx=y\x00", uevent{Action: "add", DevPath: "/d", Modalias: "of:Nx=y"}, false},
		{"udev's own message", "libudev\x00\xfe\xed\xca\xfe", uevent{}, true},
		{"no action", "@/devices/x\x00", uevent{}, true},
		{"no devpath", "add@\x00", uevent{}, true},
		{"relative devpath", "add@devices\x00", uevent{}, true},
		{"empty", "", uevent{}, true},
	} {
		got, err := parseUevent([]byte(tc.msg))
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("%s: parseUevent = %+v, %v; want %+v, error %v", tc.name, got, err, tc.want, tc.bad)
		}
	}
	if k := (uevent{DevPath: "/devices/pci0000:00/0000:00:02.0/virtio0", Subsystem: "virtio"}).key(); k != "virtio/virtio0" {
		t.Errorf("key = %q, want the /sys/bus/virtio/devices name", k)
	}
}

func FuzzParseUevent(f *testing.F) {
	for _, s := range []string{virtioNetAdd, "libudev\x00", "add@/x\x00A=\x00=\x00", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseUevent(b)
		if err != nil {
			return
		}
		head, _, _ := strings.Cut(string(b), "\x00")
		if !strings.Contains(head, "@/") {
			t.Errorf("accepted %q without an ACTION@/DEVPATH header", b)
		}
		if strings.ContainsRune(e.Modalias, 0) || strings.ContainsRune(e.Subsystem, 0) {
			t.Errorf("a field of %q holds a NUL: %+v", b, e)
		}
	})
}

// fakeEvents is a deviceEvents fed by the test.
type fakeEvents struct {
	queue  []uevent
	lost   bool
	closed bool
}

func (f *fakeEvents) added() ([]uevent, bool) {
	q := f.queue
	f.queue = nil
	return q, f.lost
}

func (f *fakeEvents) close() { f.closed = true }

// TestColdplugEvents loads the virtio network card's driver from the
// kernel's announcement alone (nothing appears in sysfs), and, when
// announcements were lost, from sysfs.
func TestColdplugEvents(t *testing.T) {
	want := []string{"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}
	for _, lost := range []bool{false, true} {
		m, got := tree(t, nil, "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "acpi:PNP0A03:")
		ev := &fakeEvents{lost: lost}
		m.events = func() (deviceEvents, error) { return ev, nil }
		insert := m.insert
		m.insert = func(file string) error {
			if strings.HasSuffix(file, "/virtio_pci.ko") {
				e, err := parseUevent([]byte(virtioNetAdd))
				if err != nil {
					t.Fatal(err)
				}
				ev.queue = append(ev.queue, e)
				if lost { // only sysfs has it
					d := filepath.Join(m.sys, "bus", "virtio", "devices", "virtio0")
					if err := os.MkdirAll(d, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(d, "modalias"), []byte(e.Modalias+"\n"), 0o444); err != nil {
						t.Fatal(err)
					}
				}
			}
			return insert(file)
		}
		m.Coldplug()
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("lost=%v: inserted\n%q\nwant\n%q", lost, *got, want)
		}
		if !ev.closed {
			t.Errorf("lost=%v: the event source was not closed", lost)
		}
	}
}

// TestUeventSocket has the kernel announce a device (a synthetic "add" of
// /dev/null, which changes nothing) and reads it from the socket Coldplug
// uses.
func TestUeventSocket(t *testing.T) {
	const trigger = "/sys/devices/virtual/mem/null/uevent"
	if os.Geteuid() != 0 {
		t.Skipf("writing %s needs root", trigger)
	}
	ev, err := openUevents()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.close()
	if err := os.WriteFile(trigger, []byte("add"), 0); err != nil {
		t.Skipf("cannot make the kernel announce a device: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, lost := ev.added()
		if lost {
			t.Fatal("announcements lost")
		}
		for _, e := range evs {
			if e.DevPath == "/devices/virtual/mem/null" && e.Subsystem == "mem" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no add of /devices/virtual/mem/null within 5 s")
		}
		_, _ = unix.Poll([]unix.PollFd{{Fd: int32(ev.(*ueventSocket).fd), Events: unix.POLLIN}}, 100)
	}
}
