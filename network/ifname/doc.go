// Package ifname gives network links the names the root's own udev would give
// them by default, before the links are brought up: the kernel refuses to
// rename a link that is up, so a root whose configuration says `ens3` would
// otherwise find only the initramfs's `eth0`.
//
// It follows systemd v252 as Debian 12 ships it (252.39, whose only change
// here ignores a phys_port_name with control characters) exactly where it
// applies: the net_id builtin (src/udev/udev-builtin-net_id.c) with naming
// scheme "v252", Debian's default, and the
// policy of 99-default.link, `NamePolicy=keep kernel database onboard slot
// path`, as link-config.c applies it:
//
//   - keep: a link already named by userspace (name_assign_type 3 or 4) keeps
//     its name;
//   - kernel: a link the kernel named predictably (name_assign_type 2) keeps
//     its name;
//   - database: udev's hwdb is not read (v252's only entry names a Dell iDRAC
//     USB NIC, which this package leaves alone anyway);
//   - onboard, slot, path: the first of ID_NET_NAME_ONBOARD (`eno1`),
//     ID_NET_NAME_SLOT (`ens3`, `ens6f1`) and ID_NET_NAME_PATH (`enp1s0`,
//     `enP1p2s0`) that is a valid name (at most 15 bytes) wins.
//
// Names are computed for links whose device is a PCI function, directly or
// through a virtio device: prefix `en` (Ethernet), `wl` (DEVTYPE=wlan), `ww`
// (DEVTYPE=wwan), `ib` (InfiniBand), `sl` (SLIP); onboard index from the
// firmware's `acpi_index` or SMBIOS `index` (0-65535); the hotplug slot from
// /sys/bus/pci/slots/N/address, searched from the function up through its
// parent bridges (a slot found on a bridge counts only for a multi-function
// device), or from the s390 `function_id`; the path from domain, bus, slot and
// function; `f<function>` when the function is non-zero or the device is
// multi-function (ARI folds the slot into the function); `n<phys_port_name>`
// or `d<dev_port>` for ports sharing a function; `v<N>` for SR-IOV virtual
// functions, named after their physical function.
//
// What it does not see, so the root's udev may still disagree:
//   - `.link` files and udev rules in the root (custom names, `Name=`,
//     another `NamePolicy=`, 70-persistent-net.rules): the root is not mounted
//     yet when the links must be named;
//   - biosdevname (`em1`, `p1p1`), which Debian does not install by default;
//   - `net.naming-scheme=` on the command line: only the v252 scheme is
//     implemented;
//   - links that are not on PCI (USB, whose stock policy is the MAC address;
//     platform, devicetree, CCW, VIO, Xen, netdevsim, BCMA): they keep their
//     kernel names here;
//   - devicetree aliases (`end0`, from an `ethernetN` alias of the parent's
//     of_node on boards with a devicetree), which v252 tries before PCI;
//   - the order in which udev meets two hotplug slots claiming one device: the
//     directory order of the sysfs given is used, which on a real sysfs is
//     the order udev sees.
//
// Alternative names (AlternativeNamesPolicy=) are not set: the root's udev
// adds them itself when it meets the link, and keeps a name given here, as
// the link's name_assign_type then says "renamed".
//
// Only links that are down are renamed. Linux 6.1 answers EBUSY for a link
// that is up (later kernels may rename it); RenameAll does not try.
//
// `net.ifnames=0` on the kernel command line turns it all off, as it does
// for udev: see Disabled.
//
// Everything is read below Options.Root ("/sys" by default), so that tests
// can describe a machine as a directory tree.
package ifname
