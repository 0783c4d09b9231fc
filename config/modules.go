package config

// BaseModules returns the kernel modules every nbdroot initramfs carries: the
// nbd driver, the entropy source (crypto/tls and DHCP block on getrandom until
// the pool is ready), the usual NICs, and the root filesystems with what they
// need but modules.dep does not say (ext4 needs crc32c_generic). Boot.Modules
// adds to this list. The boot loads only what it needs of them: nbd, the
// drivers of the devices present, and the root's filesystem. A module that is
// absent or built into the kernel is skipped.
func BaseModules() []string {
	return []string{
		"nbd",
		"virtio_pci", "virtio_rng",
		"virtio_net", "e1000", "e1000e", "igb", "ixgbe", "r8169", "tg3", "bnx2", "vmxnet3",
		"af_packet",
		"crc32c_generic", "crc32c_intel", "ext4", "xfs", "squashfs", "overlay",
	}
}
