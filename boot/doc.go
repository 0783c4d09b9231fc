// Package boot is nbdroot's boot sequence: what runs as PID 1 of the
// initramfs, and the keeper process that holds the NBD device afterwards.
//
// One pass through the house, one file per step:
//
//	early.go         mount /proc /sys /dev /run, set up the console; log.go: the log
//	(config)         kernel command line + TOML → config.Spec
//	modules.go       load nbd, the present devices' drivers (modalias) and the root's filesystem
//	network.go       link up (carrier), DHCP or static ip=, resolv.conf, DHCP root-path
//	keeper.go        the @nbdroot process that owns the connection:
//	  connect.go       dial and negotiate (dial.go) with backoff across servers
//	  serve_netlink.go attach by netlink; on link-dead, reconnect and RECONFIGURE
//	  serve_ioctl.go   attach by ioctl; DO_IT on a locked thread, reattach
//	  relay.go         the socket the kernel gets (TLS relay), queue limits
//	mount.go         mount /dev/nbdN[pM], optionally under a tmpfs overlay
//	switchroot.go    move the API mounts, free the initramfs, exec the real init
//	failure.go       the failure policy: a message, then shell (and --retry), reboot, poweroff or halt
//	sequence.go      the order above, with a timeline, resumable across retries
//	manage.go        attach's companions on a running system: status and detach
//
// Nothing here calls os.Exit; Run returns only on failure, and the caller
// (cmd/nbdroot) applies the failure policy with Fail.
package boot
