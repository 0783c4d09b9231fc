//go:build tools

// Package nbdroot pins the build tools and the u-root commands that
// `make uroot-initramfs` puts beside nbdroot, so that they are built from the
// versions in go.mod and go.sum and never fetched at build time. The tools
// build tag keeps this file out of every ordinary build.
package nbdroot

import (
	// The u-root command (package main at the module root) builds the
	// busybox image; its version is u-root's line in go.mod.
	_ "github.com/u-root/u-root"
	// The u-root commands of the image. gosh is the only one with
	// dependencies outside u-root's own module (its line editor).
	_ "github.com/u-root/u-root/cmds/core/cat"
	_ "github.com/u-root/u-root/cmds/core/dmesg"
	_ "github.com/u-root/u-root/cmds/core/gosh"
	_ "github.com/u-root/u-root/cmds/core/ip"
	_ "github.com/u-root/u-root/cmds/core/ls"
	_ "github.com/u-root/u-root/cmds/core/mount"
	_ "github.com/u-root/u-root/cmds/core/ps"
)
