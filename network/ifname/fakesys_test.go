package ifname

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// fakeSys builds a sysfs tree in a temporary directory: devices with uevent
// and subsystem links, class/net links and PCI hotplug slots, shaped as a
// real sysfs is (as listed from the Debian kernel under QEMU).
type fakeSys struct {
	t    testing.TB
	root string
}

func newFakeSys(t testing.TB) *fakeSys {
	t.Helper()
	f := &fakeSys{t: t, root: t.TempDir()}
	for _, d := range []string{"devices/virtual/net", "class/net", "bus/pci/devices", "bus/virtio", "bus/usb", "bus/platform"} {
		f.mkdir(d)
	}
	return f
}

func (f *fakeSys) opts() Options { return Options{Root: f.root} }

func (f *fakeSys) mkdir(rel string) string {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(p, 0o755); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fakeSys) write(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) symlink(target, rel string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		f.t.Fatal(err)
	}
}

// device makes devices/path a device of subsystem sub ("" for none), with
// attributes as files.
func (f *fakeSys) device(path, sub string, attrs map[string]string) {
	f.t.Helper()
	dir := "devices/" + path
	f.mkdir(dir)
	uevent := ""
	if dt, ok := attrs["DEVTYPE"]; ok {
		uevent = "DEVTYPE=" + dt + "\n"
	}
	f.write(dir+"/uevent", uevent)
	if sub != "" {
		bus := "bus/" + sub
		if sub == "net" {
			bus = "class/net"
		}
		f.symlink(filepath.Join(f.root, bus), dir+"/subsystem")
	}
	for k, v := range attrs {
		if k == "DEVTYPE" {
			continue
		}
		f.write(dir+"/"+k, v+"\n")
	}
}

// pciOpts describes a PCI function.
type pciOpts struct {
	multi  bool // the header's multi-function bit
	bridge bool // class 0604
	attrs  map[string]string
}

// pci makes devices/path a PCI function, and its host bridge directory.
func (f *fakeSys) pci(path string, o pciOpts) {
	f.t.Helper()
	f.write("devices/"+filepath.Dir(path)+"/uevent", "") // pci0000:00 or the bridge
	attrs := map[string]string{"ari_enabled": "0"}
	class := "bc02sc00i00"
	if o.bridge {
		class = "bc06sc04i00"
	}
	attrs["modalias"] = "pci:v00001AF4d00001000sv00001AF4sd00000001" + class
	for k, v := range o.attrs {
		attrs[k] = v
	}
	f.device(path, "pci", attrs)
	config := make([]byte, 64)
	if o.multi {
		config[pciHeaderType] = pciHeaderMultiFunc
	}
	if o.bridge {
		config[pciHeaderType] |= 0x01
	}
	f.write("devices/"+path+"/config", string(config))
}

// netOpts describes a network link.
type netOpts struct {
	ifindex, iflink int // iflink 0 means ifindex
	iftype          int // 0 means Ethernet
	assign          string
	devPort         string
	physPort        string
	devtype         string
	flags           string
}

// link makes a network link called name under devices/parent (a device
// directory, or "virtual").
func (f *fakeSys) link(name, parent string, o netOpts) {
	f.t.Helper()
	if o.ifindex == 0 {
		o.ifindex = 2
	}
	if o.iflink == 0 {
		o.iflink = o.ifindex
	}
	if o.iftype == 0 {
		o.iftype = arphrdEther
	}
	if o.assign == "" {
		o.assign = "1"
	}
	if o.devPort == "" {
		o.devPort = "0"
	}
	if o.flags == "" {
		o.flags = "0x1002"
	}
	attrs := map[string]string{
		"ifindex": fmt.Sprint(o.ifindex), "iflink": fmt.Sprint(o.iflink),
		"type": fmt.Sprint(o.iftype), "name_assign_type": o.assign,
		"dev_port": o.devPort, "flags": o.flags, "address": "52:54:00:12:34:56",
	}
	if o.physPort != "" {
		attrs["phys_port_name"] = o.physPort
	}
	if o.devtype != "" {
		attrs["DEVTYPE"] = o.devtype
	}
	p := parent + "/net/" + name
	f.device(p, "net", attrs)
	f.symlink(filepath.Join(f.root, "devices", p), "class/net/"+name)
	if parent != "virtual" {
		f.symlink(filepath.Join(f.root, "devices", parent), "devices/"+p+"/device")
	}
}

// virtioNet makes a virtio-net device on the PCI function pciPath and its
// link.
func (f *fakeSys) virtioNet(name, pciPath string, o netOpts) {
	f.t.Helper()
	v := pciPath + "/virtio0"
	f.device(v, "virtio", map[string]string{"modalias": "virtio:d00000001v00001AF4"})
	f.link(name, v, o)
}

// slot adds /sys/bus/pci/slots/name with address.
func (f *fakeSys) slot(name, address string) {
	f.t.Helper()
	f.write("bus/pci/slots/"+name+"/address", address+"\n")
}

// i440fxSlots adds the slots QEMU's i440fx machine exposes through ACPI PCI
// hotplug on its root bus: 2 to 31 (0 and 1 hold the host and ISA bridges).
func (f *fakeSys) i440fxSlots() {
	for i := 2; i < 32; i++ {
		f.slot(fmt.Sprint(i), fmt.Sprintf("0000:00:%02x", i))
	}
}
