package ifname

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// IDs are the names udev's net_id builtin offers for one link, its
// ID_NET_NAME_ONBOARD, ID_NET_NAME_SLOT and ID_NET_NAME_PATH properties. An
// empty field is a property net_id would not set.
type IDs struct {
	Onboard string
	Slot    string
	Path    string
}

// Link types net_id names (ARPHRD_* in linux/if_arp.h).
const (
	arphrdEther      = 1
	arphrdInfiniband = 32
	arphrdSLIP       = 256
)

// Limits from systemd v252.
const (
	// onboardIndexMax is the largest firmware index net_id believes
	// (NAMING_16BIT_INDEX, part of scheme v249 and later).
	onboardIndexMax = 1<<16 - 1
	// altIfNameSize bounds the buffers net_id composes names in
	// (ALTIFNAMSIZ); a longer name is dropped.
	altIfNameSize = 128
	// pciHeaderType is the offset of the header-type byte in PCI
	// configuration space; its top bit marks a multi-function device.
	pciHeaderType      = 0x0e
	pciHeaderMultiFunc = 0x80
)

// linkInfo is what net_id reads from the network device itself.
type linkInfo struct {
	iftype   int64
	physPort string // phys_port_name, "" when the driver has none
}

// netID is builtin_net_id for PCI devices.
func (s sysfs) netID(dev device) (IDs, error) {
	var ifindex, iflink, iftype int64
	for _, a := range []struct {
		name string
		v    *int64
	}{{"ifindex", &ifindex}, {"iflink", &iflink}, {"type", &iftype}} {
		v, err := s.attr(dev, a.name)
		if err != nil {
			return IDs{}, err
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 0, 32)
		if err != nil {
			return IDs{}, &os.PathError{Op: "parse", Path: filepath.Join(string(dev), a.name), Err: err}
		}
		*a.v = n
	}
	if ifindex != iflink {
		return IDs{}, nil // stacked: VLAN, macvlan, …
	}
	var prefix string
	switch iftype {
	case arphrdEther:
		prefix = "en"
	case arphrdInfiniband:
		prefix = "ib"
	case arphrdSLIP:
		prefix = "sl"
	default:
		return IDs{}, nil
	}
	switch s.devtype(dev) {
	case "wlan":
		prefix = "wl"
	case "wwan":
		prefix = "ww"
	}
	info := linkInfo{iftype: iftype, physPort: s.optAttr(dev, "phys_port_name")}
	if !utf8.ValidString(info.physPort) || strings.ContainsFunc(info.physPort, isControl) {
		info.physPort = "" // Debian 252.39's fix for CVE-2026-40225
	}
	ids, ok := s.pciNames(dev, info)
	if !ok {
		return IDs{}, nil
	}
	ids.affix(prefix, "")
	return ids, nil
}

// affix puts prefix before and suffix after each name of ids, dropping a
// name that would not fit net_id's buffer. (A name net_id drops at an
// earlier step, too long there, is too long here too.)
func (ids *IDs) affix(prefix, suffix string) {
	for _, p := range []*string{&ids.Onboard, &ids.Slot, &ids.Path} {
		if *p != "" && len(prefix)+len(*p)+len(suffix) < altIfNameSize {
			*p = prefix + *p + suffix
		} else {
			*p = ""
		}
	}
}

// pciNames is names_pci: it names dev when its parent, past any virtio
// device, is a PCI function. The names lack their prefix.
func (s sysfs) pciNames(dev device, info linkInfo) (IDs, bool) {
	parent, ok := s.parent(dev)
	if !ok {
		return IDs{}, false
	}
	for s.subsystem(parent) == "virtio" {
		if parent, ok = s.parent(parent); !ok {
			return IDs{}, false
		}
	}
	if s.subsystem(parent) != "pci" {
		return IDs{}, false
	}
	pcidev := parent
	physfn, suffix, isVF := s.virtfn(pcidev)
	if isVF {
		pcidev = physfn // a virtual function is named after its physical function
	}
	var n IDs
	n.Onboard = s.pciOnboard(dev, pcidev, info)
	n.Slot, n.Path = s.pciSlot(dev, pcidev, info)
	if isVF {
		n.affix("", suffix)
	}
	return n, true
}

// virtfn returns the physical function of an SR-IOV virtual function and
// the suffix "v<N>" naming it, from the physfn and virtfnN links.
func (s sysfs) virtfn(pcidev device) (device, string, bool) {
	physfn, err := s.child(pcidev, "physfn")
	if err != nil {
		return "", "", false
	}
	names, err := readDirNames(string(physfn))
	if err != nil {
		return "", "", false
	}
	for _, n := range names {
		num, ok := strings.CutPrefix(n, "virtfn")
		if !ok || !allDigits(num) {
			continue
		}
		if c, err := s.child(physfn, n); err == nil && c == pcidev {
			return physfn, "v" + num, true
		}
	}
	return "", "", false
}

// pciOnboard is dev_pci_onboard: "o<index>" from the firmware, ACPI's
// acpi_index before SMBIOS's index.
func (s sysfs) pciOnboard(dev, pcidev device, info linkInfo) string {
	v, err := s.attr(pcidev, "acpi_index")
	if err != nil {
		if v, err = s.attr(pcidev, "index"); err != nil {
			return ""
		}
	}
	idx, err := parseUnsigned(v, 0, 64)
	if err != nil || idx > onboardIndexMax {
		return "" // some firmware reports rubbish, such as 2^24-1
	}
	devPort, _ := s.decimalAttr(dev, "dev_port")
	return fmt.Sprintf("o%d", idx) + portSuffix(info.physPort, devPort)
}

// pciSlot is dev_pci_slot: the hotplug slot name and the path name.
func (s sysfs) pciSlot(dev, pcidev device, info linkInfo) (slot, path string) {
	addr, ok := parsePCIAddr(pcidev.sysname())
	if !ok {
		return "", ""
	}
	domain, fn := addr.domain, addr.function
	if s.optAttr(pcidev, "ari_enabled") == "1" {
		// ARI: up to 256 functions, the slot bits are function bits.
		fn += addr.slot * 8
	}
	devPort, hasPort := s.decimalAttr(dev, "dev_port")
	if hasPort && devPort == 0 && info.iftype == arphrdInfiniband {
		// Older kernels give IPoIB's port in dev_id instead.
		devPort, _ = s.decimalAttr(dev, "dev_id")
	}
	multi := s.multifunction(pcidev)
	fnPart := ""
	if fn > 0 || multi {
		fnPart = fmt.Sprintf("f%d", fn)
	}
	port := portSuffix(info.physPort, devPort)
	path = domainPart(domain) + fmt.Sprintf("p%ds%d", addr.bus, addr.slot) + fnPart + port

	number, fromFunctionID, ok := s.hotplugSlot(pcidev, multi)
	if !ok {
		return "", path
	}
	if fromFunctionID {
		domain = 0 // one slot per function on s390: the domain is not needed
	}
	return domainPart(domain) + fmt.Sprintf("s%d", number) + fnPart + port, path
}

// hotplugSlot finds the number of pcidev's slot (ACPI _SUN, PCIe slot
// numbers, s390 function ids), trying its parent bridges in turn, as
// dev_pci_slot does; fromFunctionID says it is an s390 function id.
func (s sysfs) hotplugSlot(pcidev device, multi bool) (number uint64, fromFunctionID, ok bool) {
	dir := filepath.Join(s.root, "bus/pci/slots")
	slots, err := readDirNames(dir)
	if err != nil {
		return 0, false, false
	}
	for d := pcidev; ; {
		// parse_hotplug_slot_from_function_id (s390): d's function_id
		// names its slot, or there is none.
		if v, err := s.attr(d, "function_id"); err == nil {
			fid, err := parseUnsigned(v, 0, 64)
			if err != nil || fid == 0 || fid > math.MaxUint32 {
				return 0, false, false
			}
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("%08x", fid))); err != nil {
				return 0, false, false
			}
			return fid, true, true
		}
		sysname := d.sysname()
		for _, name := range slots {
			i, err := parseUnsigned(name, 0, 32)
			if err != nil || i == 0 {
				continue // "0", and "3-2" for a second slot called 3
			}
			address, err := s.attr(device(dir), filepath.Join(name, "address"))
			if err != nil || !strings.HasPrefix(sysname, address) {
				continue // the address has no function: "0000:00:03"
			}
			// A bridge's slot would be claimed by every device behind
			// it; v251 and later use it for multi-function devices only.
			if s.isPCIBridge(d) && !multi {
				return 0, false, false
			}
			return i, false, true
		}
		up, ok := s.ancestorIn(d, "pci")
		if !ok {
			return 0, false, false
		}
		d = up
	}
}

// multifunction reports the multi-function bit of d's PCI header.
func (s sysfs) multifunction(d device) bool {
	f, err := os.Open(filepath.Join(string(d), "config"))
	if err != nil {
		return false
	}
	defer f.Close()
	var hdr [pciHeaderType + 1]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return false
	}
	return hdr[pciHeaderType]&pciHeaderMultiFunc != 0
}

// isPCIBridge is net_id's test: subclass 04 in the modalias
// ("pci:v…d…sv…sd…bc06sc04i00"), whatever the base class.
func (s sysfs) isPCIBridge(d device) bool {
	m := s.optAttr(d, "modalias")
	if !strings.HasPrefix(m, "pci:") {
		return false
	}
	i := strings.LastIndexByte(m, 's')
	return strings.HasPrefix(m[i+1:], "c04")
}

// pciAddr is a PCI function's address, from its sysfs name.
type pciAddr struct {
	domain, bus, slot, function uint64
}

// parsePCIAddr parses "DDDD:BB:SS.F" (hexadecimal, the function decimal)
// as net_id's sscanf("%x:%x:%x.%u") does; text after the function is
// ignored.
func parsePCIAddr(s string) (pciAddr, bool) {
	var a pciAddr
	for _, f := range []struct {
		sep string
		v   *uint64
	}{{":", &a.domain}, {":", &a.bus}, {".", &a.slot}} {
		part, rest, ok := strings.Cut(s, f.sep)
		if !ok {
			return pciAddr{}, false
		}
		v, err := strconv.ParseUint(part, 16, 32)
		if err != nil {
			return pciAddr{}, false
		}
		*f.v, s = v, rest
	}
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	v, err := strconv.ParseUint(s[:end], 10, 32)
	if err != nil {
		return pciAddr{}, false
	}
	a.function = v
	return a, true
}

// domainPart is "P<domain>" for a PCI domain other than 0.
func domainPart(domain uint64) string {
	if domain == 0 {
		return ""
	}
	return fmt.Sprintf("P%d", domain)
}

// portSuffix names one port of a function: "n<phys_port_name>" from the
// driver, else "d<dev_port>" when it is not 0.
func portSuffix(physPort string, devPort uint64) string {
	switch {
	case physPort != "":
		return "n" + physPort
	case devPort > 0:
		return fmt.Sprintf("d%d", devPort)
	}
	return ""
}

// parseUnsigned parses as systemd's safe_atou* do: leading white space
// allowed, base 0 meaning C's prefixes (0x, 0), no sign.
func parseUnsigned(s string, base, bits int) (uint64, error) {
	s = strings.TrimLeft(s, " \t\n\r")
	if strings.ContainsRune(s, '_') {
		return 0, strconv.ErrSyntax // Go accepts digit separators, C does not
	}
	return strconv.ParseUint(s, base, bits)
}

// isControl is systemd's char_is_cc.
func isControl(r rune) bool { return r < ' ' || r == 127 }

// allDigits reports whether s is a non-empty string of decimal digits.
func allDigits(s string) bool { return s != "" && strings.Trim(s, "0123456789") == "" }
