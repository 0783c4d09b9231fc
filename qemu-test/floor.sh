#!/bin/sh
# The floor of nbdroot's boot step on this rig (BenchmarkBoot): /init of an
# image made by `nbdroot mkinitramfs --base-only --shell busybox`, which
# loads the modules a boot from a virtio NIC and an ext4 NBD root needs from
# nbdroot's own module tree (modprobe brings their dependencies) and sets
# the static address of qemu-test's staticIP; nothing else. Its last line
# is the uptime at which it was done, on the clock of the kernel's
# "Run /init" line. Then it times two starts of the nbdroot binary
# (`nbdroot help`: exec, the Go runtime's start, every package's init and
# exit), the cost nbdroot pays twice (PID 1, and the keeper from its copy
# on /run) on top of the floor. Under TCG the first start of a copy is the
# dearer one: QEMU translates guest code per physical page, so a second
# run of the same pages reuses the translations (on hardware there is no
# such difference).
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
for m in virtio_pci virtio_net virtio_rng nbd ext4; do busybox modprobe $m || echo "FLOOR: modprobe $m failed"; done
while [ ! -e /sys/class/net/eth0 ]; do :; done
busybox ip link set eth0 up
busybox ip addr add 10.0.2.15/24 dev eth0
busybox ip route add default via 10.0.2.2
echo "FLOOR: done uptime=$(busybox cut -d' ' -f1 /proc/uptime)"
for run in cold warm; do
	t0=$(busybox cut -d' ' -f1 /proc/uptime)
	/nbdroot help >/dev/null 2>&1
	echo "FLOOR: gostart $run $t0 $(busybox cut -d' ' -f1 /proc/uptime)"
done
busybox poweroff -f
