package ifname

import (
	"errors"
	"fmt"
	"os"
	"testing"
)

// Each case is a machine as sysfs shows it and the names udev v252 gives its
// link. Cases marked "observed" are from the Debian kernel under QEMU 7.2
// with udevadm test-builtin net_id run in the guest; the others follow
// udev-builtin-net_id.c.
func TestNetIDAndPolicy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(f *fakeSys)
		link  string
		want  IDs
		// name is the name udev would give: a predictable one, or the
		// kernel's when it leaves the link alone.
		wantName string
	}{
		{
			name: "i440fx virtio-net in slot 3 (observed)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.virtioNet("eth0", "pci0000:00/0000:00:03.0", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "ens3", Path: "enp0s3"}, wantName: "ens3",
		},
		{
			name: "i440fx e1000 in slot 5, no virtio in between (observed)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:05.0", pciOpts{})
				f.link("eth0", "pci0000:00/0000:00:05.0", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "ens5", Path: "enp0s5"}, wantName: "ens5",
		},
		{
			name: "i440fx multi-function slot 6, function 0 (observed)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:06.0", pciOpts{multi: true})
				f.pci("pci0000:00/0000:00:06.1", pciOpts{})
				f.virtioNet("eth1", "pci0000:00/0000:00:06.0", netOpts{})
				f.virtioNet("eth2", "pci0000:00/0000:00:06.1", netOpts{ifindex: 3})
			},
			link: "eth1", want: IDs{Slot: "ens6f0", Path: "enp0s6f0"}, wantName: "ens6f0",
		},
		{
			name: "i440fx multi-function slot 6, function 1 without the header bit (observed)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:06.0", pciOpts{multi: true})
				f.pci("pci0000:00/0000:00:06.1", pciOpts{})
				f.virtioNet("eth2", "pci0000:00/0000:00:06.1", netOpts{ifindex: 3})
			},
			link: "eth2", want: IDs{Slot: "ens6f1", Path: "enp0s6f1"}, wantName: "ens6f1",
		},
		{
			name: "i440fx acpi-index=9 in slot 7: onboard before slot (observed)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:07.0", pciOpts{attrs: map[string]string{"acpi_index": "9"}})
				f.virtioNet("eth3", "pci0000:00/0000:00:07.0", netOpts{})
			},
			link: "eth3", want: IDs{Onboard: "eno9", Slot: "ens7", Path: "enp0s7"}, wantName: "eno9",
		},
		{
			name: "i440fx behind a pci-bridge: its slots are 2-2 and so on (observed)",
			build: func(f *fakeSys) {
				for i := 2; i < 32; i++ {
					if i != 8 { // the bridge's own slot is not hotpluggable
						f.slot(fmt.Sprint(i), fmt.Sprintf("0000:00:%02x", i))
					}
				}
				f.slot("0", "0000:01:00")
				f.slot("1", "0000:01:01")
				f.slot("2-2", "0000:01:02")
				f.slot("8", "0000:01:08")
				f.pci("pci0000:00/0000:00:08.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:08.0/0000:01:02.0", pciOpts{})
				f.virtioNet("eth4", "pci0000:00/0000:00:08.0/0000:01:02.0", netOpts{})
			},
			link: "eth4", want: IDs{Path: "enp1s2"}, wantName: "enp1s2",
		},
		{
			name: "q35 virtio-net behind a PCIe root port: slot 0 does not count (observed)",
			build: func(f *fakeSys) {
				f.slot("0", "0000:01:00")
				f.slot("0-2", "0000:02:00")
				f.pci("pci0000:00/0000:00:02.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:02.0/0000:01:00.0", pciOpts{})
				f.virtioNet("eth1", "pci0000:00/0000:00:02.0/0000:01:00.0", netOpts{})
			},
			link: "eth1", want: IDs{Path: "enp1s0"}, wantName: "enp1s0",
		},
		{
			name: "q35 multi-function device behind a root port (observed)",
			build: func(f *fakeSys) {
				f.slot("0", "0000:01:00")
				f.slot("0-3", "0000:03:00")
				f.pci("pci0000:00/0000:00:03.1", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:03.1/0000:03:00.0", pciOpts{multi: true})
				f.virtioNet("eth2", "pci0000:00/0000:00:03.1/0000:03:00.0", netOpts{})
			},
			link: "eth2", want: IDs{Path: "enp3s0f0"}, wantName: "enp3s0f0",
		},
		{
			name: "q35 without slots on the root bus (observed)",
			build: func(f *fakeSys) {
				f.mkdir("bus/pci/slots")
				f.pci("pci0000:00/0000:00:06.0", pciOpts{})
				f.link("eth4", "pci0000:00/0000:00:06.0", netOpts{})
			},
			link: "eth4", want: IDs{Path: "enp0s6"}, wantName: "enp0s6",
		},
		{
			name: "no slots directory at all",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.virtioNet("eth0", "pci0000:00/0000:00:03.0", netOpts{})
			},
			link: "eth0", want: IDs{Path: "enp0s3"}, wantName: "enp0s3",
		},
		{
			name: "PCIe slot numbered by the port: address is the bus",
			build: func(f *fakeSys) {
				f.slot("4", "0000:02")
				f.pci("pci0000:00/0000:00:1c.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:1c.0/0000:02:00.0", pciOpts{})
				f.link("eth0", "pci0000:00/0000:00:1c.0/0000:02:00.0", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "ens4", Path: "enp2s0"}, wantName: "ens4",
		},
		{
			name: "slot on the parent bridge, single-function device: no slot name",
			build: func(f *fakeSys) {
				f.slot("5", "0000:00:1c")
				f.pci("pci0000:00/0000:00:1c.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:1c.0/0000:02:00.0", pciOpts{})
				f.link("eth0", "pci0000:00/0000:00:1c.0/0000:02:00.0", netOpts{})
			},
			link: "eth0", want: IDs{Path: "enp2s0"}, wantName: "enp2s0",
		},
		{
			name: "slot on the parent bridge, multi-function device: the bridge's slot",
			build: func(f *fakeSys) {
				f.slot("5", "0000:00:1c")
				f.pci("pci0000:00/0000:00:1c.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:1c.0/0000:02:00.1", pciOpts{multi: true})
				f.link("eth0", "pci0000:00/0000:00:1c.0/0000:02:00.1", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "ens5f1", Path: "enp2s0f1"}, wantName: "ens5f1",
		},
		{
			name: "PCI domain 1",
			build: func(f *fakeSys) {
				f.slot("2", "0001:00:02")
				f.pci("pci0001:00/0001:00:02.0", pciOpts{})
				f.link("eth0", "pci0001:00/0001:00:02.0", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "enP1s2", Path: "enP1p0s2"}, wantName: "enP1s2",
		},
		{
			name: "VMD domain 0x10000 is printed in decimal",
			build: func(f *fakeSys) {
				f.pci("pci10000:e0/10000:e1:00.0", pciOpts{})
				f.link("eth0", "pci10000:e0/10000:e1:00.0", netOpts{})
			},
			link: "eth0", want: IDs{Path: "enP65536p225s0"}, wantName: "enP65536p225s0",
		},
		{
			name: "name longer than 15 bytes: the next policy",
			build: func(f *fakeSys) {
				f.slot("3", "0000:00:03")
				f.pci("pci0000:00/0000:00:03.0", pciOpts{attrs: map[string]string{"acpi_index": "12345"}})
				f.link("eth0", "pci0000:00/0000:00:03.0", netOpts{physPort: "p0123456789"})
			},
			link: "eth0",
			want: IDs{Onboard: "eno12345np0123456789", Slot: "ens3np0123456789", Path: "enp0s3np0123456789"},
			// every one is too long: the kernel name stays
			wantName: "eth0",
		},
		{
			name: "onboard from SMBIOS index when there is no acpi_index",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:19.0", pciOpts{attrs: map[string]string{"index": "1", "label": "Onboard LAN"}})
				f.link("eth0", "pci0000:00/0000:00:19.0", netOpts{})
			},
			link: "eth0", want: IDs{Onboard: "eno1", Path: "enp0s25"}, wantName: "eno1",
		},
		{
			name: "acpi_index wins over SMBIOS index",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:19.0", pciOpts{attrs: map[string]string{"acpi_index": "3", "index": "1"}})
				f.link("eth0", "pci0000:00/0000:00:19.0", netOpts{})
			},
			link: "eth0", want: IDs{Onboard: "eno3", Path: "enp0s25"}, wantName: "eno3",
		},
		{
			name: "index 0 is allowed since v240",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:19.0", pciOpts{attrs: map[string]string{"acpi_index": "0"}})
				f.link("eth0", "pci0000:00/0000:00:19.0", netOpts{})
			},
			link: "eth0", want: IDs{Onboard: "eno0", Path: "enp0s25"}, wantName: "eno0",
		},
		{
			name: "index 65535 is the largest believed",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:19.0", pciOpts{attrs: map[string]string{"acpi_index": "65535"}})
				f.link("eth0", "pci0000:00/0000:00:19.0", netOpts{})
			},
			link: "eth0", want: IDs{Onboard: "eno65535", Path: "enp0s25"}, wantName: "eno65535",
		},
		{
			name: "VMware's index 2^24-1 is rubbish",
			build: func(f *fakeSys) {
				f.slot("160", "0000:03:00")
				f.pci("pci0000:00/0000:00:15.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:15.0/0000:03:00.0", pciOpts{attrs: map[string]string{"acpi_index": "16777215"}})
				f.link("eth0", "pci0000:00/0000:00:15.0/0000:03:00.0", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "ens160", Path: "enp3s0"}, wantName: "ens160",
		},
		{
			name: "unparsable acpi_index: no onboard name, SMBIOS index not tried",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:19.0", pciOpts{attrs: map[string]string{"acpi_index": "x", "index": "1"}})
				f.link("eth0", "pci0000:00/0000:00:19.0", netOpts{})
			},
			link: "eth0", want: IDs{Path: "enp0s25"}, wantName: "enp0s25",
		},
		{
			name: "second port of a function: dev_port",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{attrs: map[string]string{"acpi_index": "2"}})
				f.link("eth1", "pci0000:00/0000:00:03.0", netOpts{devPort: "1"})
			},
			link: "eth1", want: IDs{Onboard: "eno2d1", Slot: "ens3d1", Path: "enp0s3d1"}, wantName: "eno2d1",
		},
		{
			name: "phys_port_name wins over dev_port",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{multi: true})
				f.link("eth1", "pci0000:00/0000:00:03.0", netOpts{devPort: "1", physPort: "p1"})
			},
			link: "eth1", want: IDs{Slot: "ens3f0np1", Path: "enp0s3f0np1"}, wantName: "ens3f0np1",
		},
		{
			name: "phys_port_name with a control character is ignored (Debian's CVE-2026-40225 fix)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.link("eth1", "pci0000:00/0000:00:03.0", netOpts{devPort: "1", physPort: "p\x1b1"})
			},
			link: "eth1", want: IDs{Slot: "ens3d1", Path: "enp0s3d1"}, wantName: "ens3d1",
		},
		{
			name: "ARI folds the slot into the function",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:02.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:02.0/0000:05:01.2", pciOpts{attrs: map[string]string{"ari_enabled": "1"}})
				f.link("eth0", "pci0000:00/0000:00:02.0/0000:05:01.2", netOpts{})
			},
			link: "eth0", want: IDs{Path: "enp5s1f10"}, wantName: "enp5s1f10",
		},
		{
			name: "SR-IOV virtual function named after its physical function",
			build: func(f *fakeSys) {
				f.slot("1", "0000:03:00")
				f.pci("pci0000:00/0000:00:02.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:02.0/0000:03:00.0", pciOpts{attrs: map[string]string{"acpi_index": "1"}})
				f.pci("pci0000:00/0000:00:02.0/0000:03:10.2", pciOpts{})
				f.symlink(f.root+"/devices/pci0000:00/0000:00:02.0/0000:03:00.0", "devices/pci0000:00/0000:00:02.0/0000:03:10.2/physfn")
				f.symlink(f.root+"/devices/pci0000:00/0000:00:02.0/0000:03:10.0", "devices/pci0000:00/0000:00:02.0/0000:03:00.0/virtfn4")
				f.symlink(f.root+"/devices/pci0000:00/0000:00:02.0/0000:03:10.2", "devices/pci0000:00/0000:00:02.0/0000:03:00.0/virtfn5")
				f.link("eth3", "pci0000:00/0000:00:02.0/0000:03:10.2", netOpts{})
			},
			link: "eth3", want: IDs{Onboard: "eno1v5", Slot: "ens1v5", Path: "enp3s0v5"}, wantName: "eno1v5",
		},
		{
			name: "s390 function_id names the slot, without the domain",
			build: func(f *fakeSys) {
				f.mkdir("bus/pci/slots/00000022")
				f.pci("pci0001:00/0001:00:00.0", pciOpts{attrs: map[string]string{"function_id": "0x00000022"}})
				f.link("eth0", "pci0001:00/0001:00:00.0", netOpts{})
			},
			link: "eth0", want: IDs{Slot: "ens34", Path: "enP1p0s0"}, wantName: "ens34",
		},
		{
			name: "s390 function_id without its slot directory: no slot at all",
			build: func(f *fakeSys) {
				f.slot("7", "0001:00:00")
				f.pci("pci0001:00/0001:00:00.0", pciOpts{attrs: map[string]string{"function_id": "0x00000022"}})
				f.link("eth0", "pci0001:00/0001:00:00.0", netOpts{})
			},
			link: "eth0", want: IDs{Path: "enP1p0s0"}, wantName: "enP1p0s0",
		},
		{
			name: "WLAN",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:1c.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:1c.0/0000:02:00.0", pciOpts{})
				f.link("wlan0", "pci0000:00/0000:00:1c.0/0000:02:00.0", netOpts{devtype: "wlan"})
			},
			link: "wlan0", want: IDs{Path: "wlp2s0"}, wantName: "wlp2s0",
		},
		{
			name: "WWAN",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:1c.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:1c.0/0000:04:00.0", pciOpts{})
				f.link("wwan0", "pci0000:00/0000:00:1c.0/0000:04:00.0", netOpts{devtype: "wwan"})
			},
			link: "wwan0", want: IDs{Path: "wwp4s0"}, wantName: "wwp4s0",
		},
		{
			name: "InfiniBand port from dev_id when dev_port is 0",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:1c.0", pciOpts{bridge: true})
				f.pci("pci0000:00/0000:00:1c.0/0000:04:00.0", pciOpts{})
				f.link("ib0", "pci0000:00/0000:00:1c.0/0000:04:00.0", netOpts{iftype: arphrdInfiniband})
				f.write("devices/pci0000:00/0000:00:1c.0/0000:04:00.0/net/ib0/dev_id", "2\n")
			},
			link: "ib0", want: IDs{Path: "ibp4s0d2"}, wantName: "ibp4s0d2",
		},
		{
			name: "the kernel's predictable name stays (policy kernel)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.virtioNet("eth0", "pci0000:00/0000:00:03.0", netOpts{assign: "2"})
			},
			link: "eth0", want: IDs{Slot: "ens3", Path: "enp0s3"}, wantName: "eth0",
		},
		{
			name: "a name from userspace stays (policy keep)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.virtioNet("lan", "pci0000:00/0000:00:03.0", netOpts{assign: "3"})
			},
			link: "lan", want: IDs{Slot: "ens3", Path: "enp0s3"}, wantName: "lan",
		},
		{
			name: "a link renamed by userspace stays (policy keep)",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.virtioNet("ens3", "pci0000:00/0000:00:03.0", netOpts{assign: "4"})
			},
			link: "ens3", want: IDs{Slot: "ens3", Path: "enp0s3"}, wantName: "ens3",
		},
		{
			name: "unknown name_assign_type (unreadable) is renamed",
			build: func(f *fakeSys) {
				f.i440fxSlots()
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.virtioNet("eth0", "pci0000:00/0000:00:03.0", netOpts{})
				os.Remove(f.root + "/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0/name_assign_type")
			},
			link: "eth0", want: IDs{Slot: "ens3", Path: "enp0s3"}, wantName: "ens3",
		},
		{
			name: "loopback",
			build: func(f *fakeSys) {
				f.link("lo", "virtual", netOpts{ifindex: 1, iftype: 772, assign: "2", flags: "0x9"})
			},
			link: "lo", want: IDs{}, wantName: "lo",
		},
		{
			name: "virtual link: no parent device",
			build: func(f *fakeSys) {
				f.link("veth0", "virtual", netOpts{})
			},
			link: "veth0", want: IDs{}, wantName: "veth0",
		},
		{
			name: "USB NIC: not on PCI directly, left alone",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:14.0", pciOpts{})
				f.device("pci0000:00/0000:00:14.0/usb1", "usb", nil)
				f.device("pci0000:00/0000:00:14.0/usb1/1-1", "usb", nil)
				f.device("pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0", "usb", nil)
				f.link("eth0", "pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0", netOpts{})
			},
			link: "eth0", want: IDs{}, wantName: "eth0",
		},
		{
			name: "VLAN on a PCI NIC: stacked, left alone",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.link("eth0.7", "pci0000:00/0000:00:03.0", netOpts{ifindex: 5, iflink: 2})
			},
			link: "eth0.7", want: IDs{}, wantName: "eth0.7",
		},
		{
			name: "link type net_id does not name (CAN)",
			build: func(f *fakeSys) {
				f.pci("pci0000:00/0000:00:03.0", pciOpts{})
				f.link("can0", "pci0000:00/0000:00:03.0", netOpts{iftype: 280})
			},
			link: "can0", want: IDs{}, wantName: "can0",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSys(t)
			tc.build(f)
			ids, err := NetID(f.opts(), tc.link)
			if err != nil {
				t.Fatalf("NetID: %v", err)
			}
			if ids != tc.want {
				t.Errorf("NetID(%s) = %+v, want %+v", tc.link, ids, tc.want)
			}
			name, err := Predictable(f.opts(), tc.link)
			if err != nil {
				t.Fatalf("Predictable: %v", err)
			}
			if name != tc.wantName {
				t.Errorf("Predictable(%s) = %q, want %q", tc.link, name, tc.wantName)
			}
		})
	}
}

func TestMissingLink(t *testing.T) {
	f := newFakeSys(t)
	for _, name := range []string{"eth9", "", "..", "a/b"} {
		_, err := Predictable(f.opts(), name)
		var le *LinkError
		if !errors.As(err, &le) || le.Link != name || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Predictable(%q): want a *LinkError wrapping ErrNotExist, got %v", name, err)
		}
	}
}

func TestParsePCIAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want pciAddr
		ok   bool
	}{
		{"0000:00:03.0", pciAddr{0, 0, 3, 0}, true},
		{"0001:1a:1f.7", pciAddr{1, 0x1a, 0x1f, 7}, true},
		{"10000:e1:00.0", pciAddr{0x10000, 0xe1, 0, 0}, true},
		{"0000:00:03.0x", pciAddr{0, 0, 3, 0}, true},
		{"0000:00:03", pciAddr{}, false},
		{"0000:00:03.", pciAddr{}, false},
		{"pci0000:00", pciAddr{}, false},
		{"usb1", pciAddr{}, false},
		{"", pciAddr{}, false},
	} {
		got, ok := parsePCIAddr(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parsePCIAddr(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParsePCIAddr(f *testing.F) {
	for _, s := range []string{"0000:00:03.0", "10000:e1:00.0", "0:0:0.", ":::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := parsePCIAddr(s)
		if !ok && a != (pciAddr{}) {
			t.Errorf("parsePCIAddr(%q) failed but returned %+v", s, a)
		}
		if ok && (a.domain > 0xffffffff || a.bus > 0xffffffff || a.slot > 0xffffffff || a.function > 0xffffffff) {
			t.Errorf("parsePCIAddr(%q) = %+v: beyond an unsigned int", s, a)
		}
	})
}

func TestValidIfName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"ens3", true}, {"enp0s20f0u1u2", true}, {"eno12345678901", true},
		{"eno123456789012", true}, {"eno1234567890123", false},
		{"", false}, {".", false}, {"..", false}, {"123", false},
		{"a b", false}, {"a:b", false}, {"a/b", false}, {"é", false},
	} {
		if got := validIfName(tc.in); got != tc.want {
			t.Errorf("validIfName(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
