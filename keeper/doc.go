// Package keeper is the @nbdroot process that holds an NBD device: the
// process that dials, negotiates, hands the connection to the kernel, relays
// it under TLS and reconnects it for as long as the device is attached. A
// root device has nowhere else to go, so the keeper outlives the boot.
//
// It owns, one file each:
//
//	daemon.go        the spawn protocol (argv, environment, the one-line report on fd 3)
//	                 and the daemon's identity: argv[0] "@nbdroot", its name, its
//	                 signals, following PID 1 into the real root; Start and Main
//	rundir.go        the run-directory protocol, /run/nbdroot/nbdN.{json,pid,stop}
//	                 (RunDir), and its users on a running system: Status and Detach
//	keeper.go        one keeper's run: connect, attach, then its duties under one context
//	serve_netlink.go the serve duty by netlink: attach, and RECONFIGURE on link-dead
//	serve_ioctl.go   the serve duty by ioctl: DO_IT on a locked thread, reattach
//	relay.go         the socket the kernel gets (TLS relay), queue limits
//	memlock.go       locking the keeper in memory for a swap device
//	initramfs.go     the root's keeper freeing the initramfs once the root's init runs
//
// After the attach a keeper's work is a set of duties (serving the device,
// following PID 1's root, ...), each a goroutine under one context that
// ends when the device is detached or any duty returns; a new job of the
// keeper is a new duty.
//
// It may import dial, ioctl, netlink, nbddev, config, negotiate, network,
// bootlog, internal/poll, shutdown (FreeInitramfs) and x/sys/unix;
// nothing of the boot sequence.
package keeper
