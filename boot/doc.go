// Package boot is nbdroot's boot sequence: what runs as PID 1 of the
// initramfs, from the first mount to the exec of the real init, and the
// failure policy when it cannot get there. It owns the order of the steps
// and what is resumed on a retry; the steps' jobs live in their own
// packages (config, kmod, dial and keeper), and it may import all of them,
// bootlog, nbddev, internal/poll and u-root's packages, but nothing imports
// boot except cmd/nbdroot.
//
// One pass through the house, one file per step:
//
//	early.go         mount /proc /sys /dev /run, set up the console
//	(config)         kernel command line + TOML → config.Spec
//	(kmod)           load nbd, the present devices' drivers (modalias) and the root's filesystem
//	network.go       link up (carrier), DHCP or static ip=, resolv.conf, DHCP root-path
//	(keeper)         start the @nbdroot process that connects, attaches and keeps the device
//	mount.go         mount /dev/nbdN[pM], optionally under a tmpfs overlay
//	switchroot.go    move the API mounts, free the initramfs, exec the real init
//	failure.go       the failure policy: a message, then shell (and --retry), reboot, poweroff or halt
//	sequence.go      the order above, with a timeline, resumable across retries
//
// Errors are *StepError, naming the step once; the steps' own errors do not
// repeat it. Nothing here calls os.Exit; Run returns only on failure, and
// the caller (cmd/nbdroot) applies the failure policy with Fail.
package boot
