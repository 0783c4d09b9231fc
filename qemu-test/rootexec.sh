#!/bin/busybox sh
# /sbin/init of BenchmarkBoot's root: it marks the moment the root's init
# runs, which is where nbdroot's part of the boot ends, and hands over to
# the rig's init (testinit, a Go program read over NBD, whose own start
# is the root's cost, not nbdroot's). busybox is static, so its start
# reads only the pages it runs. Its line is on the clock of the kernel's
# "Run /init" line, as the floor's (floor.sh) is.
read up idle </proc/uptime
echo "ROOTEXEC: uptime=$up"
exec /sbin/testinit "$@"
