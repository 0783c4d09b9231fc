// Exported for the tests only: the product names links through RenameAll.

package ifname

// NetID computes the IDs udev's net_id builtin (systemd v252, naming scheme
// v252) gives the link called name, for links on PCI. A link net_id would not
// name from its PCI location (not Ethernet, WLAN, WWAN, InfiniBand or SLIP; a
// stacked link such as a VLAN; no PCI parent) gets zero IDs and no error.
func NetID(opts Options, name string) (IDs, error) {
	s, err := opts.sysfs()
	if err != nil {
		return IDs{}, &LinkError{Link: name, Err: err}
	}
	d, err := s.netDevice(name)
	if err != nil {
		return IDs{}, &LinkError{Link: name, Err: err}
	}
	ids, err := s.netID(d)
	if err != nil {
		return IDs{}, &LinkError{Link: name, Err: err}
	}
	return ids, nil
}

// Predictable returns the name the root's udev would give, by default, the
// link now called kernelName (see the package documentation): kernelName
// itself when udev would leave the link alone. It does not look at the kernel
// command line: see Disabled.
func Predictable(opts Options, kernelName string) (string, error) {
	s, err := opts.sysfs()
	if err != nil {
		return "", &LinkError{Link: kernelName, Err: err}
	}
	name, err := s.predictable(kernelName)
	if err != nil {
		return "", &LinkError{Link: kernelName, Err: err}
	}
	return name, nil
}
