// Package boot is nbdroot's boot sequence: what runs as PID 1 of the
// initramfs, and the keeper process that holds the NBD device afterwards.
//
// One pass through the house, one file per step:
//
//	early.go      mount /proc /sys /dev /run, set up the console and the log
//	(config)      kernel command line + TOML → config.Spec
//	modules.go    load nbd, NICs, entropy and filesystems through modules.dep
//	network.go    link up, DHCP or static ip=, resolv.conf, DHCP root-path
//	connect.go    dial and negotiate (dial.go) with backoff across servers
//	keeper.go     the @nbdroot process: attach (ioctl), DO_IT, TLS relay, reconnect
//	mount.go      mount /dev/nbdN[pM], optionally under a tmpfs overlay
//	switchroot.go move the API mounts, free the initramfs, exec the real init
//	failure.go    the failure policy: a message, then shell, reboot, poweroff or halt
//	sequence.go   the order above, with a timeline
//
// Nothing here calls os.Exit; Run returns only on failure, and the caller
// (cmd/nbdroot) applies the failure policy with Fail.
package boot
