#!/usr/bin/env bash
# make demo: boot a QEMU guest from an ext4 root served over NBD on loopback.
#
# Builds an initramfs with nbdroot as /init and a small busybox root image,
# serves the image with qemu-nbd on 127.0.0.1, boots the distribution kernel
# under QEMU (TCG) and leaves you at the root's shell on the serial console
# (exit the shell to power off). DEMO_AUTO=1 runs a scripted check instead
# and powers off. Afterwards it prints nbdroot's boot timeline.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/nbdroot-demo.XXXXXX)
srv_pid=
cleanup() {
	if [ -n "$srv_pid" ] && kill -0 "$srv_pid" 2>/dev/null; then
		kill "$srv_pid"; wait "$srv_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

kernel=$(ls /boot/vmlinuz-* | sort -V | tail -n 1)
bin/nbdroot mkinitramfs -o "$work/initramfs.img" --kernel "$kernel"

# The root: busybox, and an init that greets and hands over a shell.
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,root}
cp /bin/busybox "$root/bin/busybox"
for app in sh ls cat mount umount ps grep dmesg df poweroff sync mkdir echo uname sleep free head tail date setsid cttyhack vi; do
	ln -s busybox "$root/bin/$app"
done
cat > "$root/sbin/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin:/sbin
echo
echo "=== nbdroot demo: this is the NBD root's own init (pid $$) ==="
grep ' / ' /proc/mounts | tail -n 1
echo "keeper: $(ps -o pid,args | grep '[@]nbdroot')"
if grep -q demo.auto=1 /proc/cmdline; then
	echo "hello from $(uname -r) at $(date)" > /root/hello.txt && sync
	echo "wrote /root/hello.txt: $(cat /root/hello.txt)"
	df -h /
	echo "=== scripted check done; powering off ==="
else
	echo "You are on the NBD root. Exit the shell to power off."
	setsid cttyhack sh
fi
sync
mount -o remount,ro / 2>/dev/null
poweroff -f
INIT
chmod 755 "$root/sbin/init"
truncate -s 64M "$work/root.img"
mkfs.ext4 -q -F -d "$root" "$work/root.img"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
qemu-nbd -x rootfs -b 127.0.0.1 -p "$port" -f raw --persistent "$work/root.img" &
srv_pid=$!
# Wait until it serves, asking politely (nbdroot probe ends with NBD_CMD_DISC).
for _ in $(seq 50); do bin/nbdroot probe --timeout 1s "127.0.0.1:$port/rootfs" >/dev/null 2>&1 && break; sleep 0.1; done
echo "demo: qemu-nbd (pid $srv_pid) serves $work/root.img as 'rootfs' on 127.0.0.1:$port"

append="console=ttyS0 panic=-1 nbdroot=10.0.2.2:$port/rootfs rw"
stdin=/dev/stdin
if [ "${DEMO_AUTO:-0}" = 1 ] || [ ! -t 0 ]; then
	append="$append demo.auto=1"
	stdin=/dev/null
fi
echo "demo: booting $(basename "$kernel") with: $append"
qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nodefaults -no-user-config \
	-display none -serial mon:stdio -no-reboot \
	-kernel "$kernel" -initrd "$work/initramfs.img" -append "$append" \
	-netdev user,id=n0 -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
	<"$stdin" | tee "$work/console.log"

echo
echo "=== boot timeline (nbdroot's console lines) ==="
grep -a 'nbdroot: ' "$work/console.log" | tr -d '\r' || true
grep -a -q 'root ready in' "$work/console.log"
