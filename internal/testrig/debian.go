package testrig

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DebianSuite is the release the Debian roots are made from.
const DebianSuite = "bookworm"

// debianBuildTimeout bounds one mmdebstrap run (50 s to 2.5 min here, most
// of it downloading and unpacking).
const debianBuildTimeout = 15 * time.Minute

// DebianPackages returns the packages installed on top of mmdebstrap's
// minbase variant: systemd as init, udev, the tools a server has, and the
// three network stacks the tests switch between (NetStack).
func DebianPackages() []string {
	return []string{
		"systemd-sysv", "udev", "kmod", "iproute2", "procps", "e2fsprogs",
		"ifupdown", "isc-dhcp-client", // NetIfupdown
		"network-manager", // NetworkManager (systemd-networkd is in systemd)
	}
}

// debianSetup is the shell script mmdebstrap runs as a customize hook, with
// the root's directory as $1, after the packages are installed. It leaves
// the root as a stock install would, minus what the installer asks about.
const debianSetup = `set -e
echo nbdroot-debian >"$1/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tnbdroot-debian\n' >"$1/etc/hosts"
# An empty machine-id: systemd generates one at the first boot, as after an
# installer that cleans it for images.
: >"$1/etc/machine-id"
rm -f "$1/etc/resolv.conf"
`

// DebianRoot returns the directory of a Debian root (DebianSuite, minbase
// with DebianPackages) holding the modules of the kernel release
// kernelVersion copied from the host's /lib/modules, as an installed kernel
// package leaves them. Network configuration is left as the packages leave
// it: see NetStack.Configure.
//
// The tree is built with mmdebstrap (as root) and cached under
// $XDG_CACHE_HOME/nbdroot (default ~/.cache/nbdroot), keyed by a hash of
// the suite, the packages, the set-up script and the kernel release, so
// reruns reuse it. With CI set it is built fresh, once per test process,
// under the temporary directory. The tree is shared: never modify it; use
// DebianCopy for a private copy.
func DebianRoot(t testing.TB, kernelVersion string) string {
	t.Helper()
	return debianRoot(t, kernelVersion, debianVariant{})
}

// DebianInitramfsPackages are the packages DebianRootNBDClient adds: Debian's
// own way to boot from NBD.
func DebianInitramfsPackages() []string { return []string{"nbd-client", "initramfs-tools"} }

// DebianRootNBDClient is DebianRoot plus Debian's own NBD boot: nbd-client
// and initramfs-tools installed, and an initramfs made by mkinitramfs in the
// root for kernelVersion. It returns the tree and the initramfs (in the
// tree's /boot, as update-initramfs leaves it), which boots with
// `nbdroot=HOST:PORT/NAME root=/dev/nbd0 ip=dhcp`.
func DebianRootNBDClient(t testing.TB, kernelVersion string) (root, initrd string) {
	t.Helper()
	Need(t, "chroot")
	v := debianVariant{
		name:     "nbd-client",
		packages: DebianInitramfsPackages(),
		hook:     `cp /boot/config-"$2" "$1/boot/"; chroot "$1" mkinitramfs -o /boot/initrd.img-"$2" "$2"`,
	}
	root = debianRoot(t, kernelVersion, v)
	return root, filepath.Join(root, "boot", "initrd.img-"+kernelVersion)
}

// debianVariant is what a variant of the Debian root adds to the base.
type debianVariant struct {
	name     string   // part of the cache directory's name
	packages []string // on top of DebianPackages
	// hook is a shell script run after the kernel's modules are in
	// place, with the tree as $1 and the kernel release as $2.
	hook string
}

// debianRoot returns the cached tree of variant v, building it if needed.
func debianRoot(t testing.TB, kernelVersion string, v debianVariant) string {
	t.Helper()
	Need(t, "mmdebstrap")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("testrig: building a Debian root with mmdebstrap needs root")
		}
		t.Skipf("testrig: building a Debian root with mmdebstrap needs root")
	}
	modules := filepath.Join("/lib/modules", kernelVersion)
	if _, err := os.Stat(modules); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("testrig: the kernel's modules: %v (run make deps)", err)
		}
		t.Skipf("testrig: the kernel's modules: %v (run make deps)", err)
	}
	dir, err := debianCacheDir()
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	base := "debian-"
	if v.name != "" {
		base += v.name + "-"
	}
	base += v.key(kernelVersion)
	root := filepath.Join(dir, base)
	if os.Getenv("CI") != "" {
		root = filepath.Join(os.TempDir(), fmt.Sprintf("nbdroot-ci-%d-%s", os.Getpid(), base))
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	// One builder at a time, across test processes too; the others wait
	// and find the tree built.
	unlock, err := lockFile(root + ".lock")
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(root, ".complete")); err == nil {
		return root
	}
	t0 := time.Now()
	if err := v.build(root, modules, kernelVersion); err != nil {
		t.Fatalf("testrig: building the Debian root: %v", err)
	}
	t.Logf("testrig: built the Debian %s root in %v at %s", DebianSuite, time.Since(t0).Round(time.Second), root)
	return root
}

// DebianKey is the cache key of the Debian root (DebianRoot) for
// kernelVersion: a hash of everything the tree is made from.
func DebianKey(kernelVersion string) string { return debianVariant{}.key(kernelVersion) }

// key hashes everything the variant's tree is made from.
func (v debianVariant) key(kernelVersion string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", DebianSuite, strings.Join(DebianPackages(), ","), debianSetup, kernelVersion)
	if v.name != "" {
		fmt.Fprintf(h, "%s\n%s\n%s\n", v.name, strings.Join(v.packages, ","), v.hook)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// debianCacheDir is where Debian roots are cached.
func debianCacheDir() (string, error) {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "nbdroot"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: %w", err)
	}
	return filepath.Join(home, ".cache", "nbdroot"), nil
}

// build runs mmdebstrap into a fresh directory next to root, copies the
// kernel's modules in, runs the variant's hook and renames the directory
// to root.
func (v debianVariant) build(root, modules, kernelVersion string) error {
	tmp := root + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	pkgs := append(DebianPackages(), v.packages...)
	argv := []string{"mmdebstrap", "--variant=minbase",
		"--include=" + strings.Join(pkgs, ","),
		"--customize-hook=" + debianSetup,
		DebianSuite, tmp}
	if out, err := runFor(debianBuildTimeout, argv...); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv[:2], " "), err, tail(out, 4000))
	}
	// /lib is /usr/lib in bookworm (merged /usr).
	dst := filepath.Join(tmp, "usr/lib/modules")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if out, err := runFor(5*time.Minute, "cp", "-a", modules, dst+"/"); err != nil {
		return fmt.Errorf("copying %s: %w\n%s", modules, err, out)
	}
	if v.hook != "" {
		if out, err := runFor(10*time.Minute, "sh", "-ec", v.hook, "hook", tmp, kernelVersion); err != nil {
			return fmt.Errorf("%s: %w\n%s", v.hook, err, tail(out, 4000))
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, root)
}

// DebianCopy returns a private copy of the tree at root (from DebianRoot)
// under a temporary directory of the test. Files are hard links into the
// shared tree when both are on one filesystem: replace a file
// (ReplaceFile), never write into it.
func DebianCopy(t testing.TB, root string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "root")
	if _, err := runFor(5*time.Minute, "cp", "-al", root, dst); err != nil {
		// Another filesystem (a tmpfs /tmp): a real copy.
		if err := os.RemoveAll(dst); err != nil {
			t.Fatalf("testrig: %v", err)
		}
		if out, err := runFor(10*time.Minute, "cp", "-a", root, dst); err != nil {
			t.Fatalf("testrig: copying %s: %v\n%s", root, err, out)
		}
	}
	if err := os.Remove(filepath.Join(dst, ".complete")); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	return dst
}

// ReplaceFile writes data at root/name (slash-separated, relative to root)
// as a new file with mode perm, removing whatever was there first, so that
// a hard link into a shared tree (DebianCopy) is never written through.
func ReplaceFile(t testing.TB, root, name string, data []byte, perm os.FileMode) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		t.Fatalf("testrig: %v", err)
	}
	if err := os.WriteFile(p, data, perm); err != nil {
		t.Fatalf("testrig: %v", err)
	}
}

// Systemctl runs `systemctl --root=ROOT args...` on a tree (enable,
// disable), which only adds or removes symbolic links.
func Systemctl(t testing.TB, root string, args ...string) {
	t.Helper()
	Need(t, "systemctl")
	argv := append([]string{"systemctl", "--root=" + root}, args...)
	if out, err := runFor(time.Minute, argv...); err != nil {
		t.Fatalf("testrig: %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// runFor runs argv, killing it after timeout, and returns its combined
// output.
func runFor(timeout time.Duration, argv ...string) ([]byte, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	timer := time.AfterFunc(timeout, func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	return cmd.CombinedOutput()
}

// lockFile takes an exclusive lock on path (created if needed) and returns
// the function that releases it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return func() { f.Close() }, nil
}

// tail returns at most the last n bytes of b.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// NetStack is a network stack of a Debian root, set up by Configure the
// way its package and a stock install leave it.
type NetStack string

// The network stacks of DebianPackages.
const (
	// NetIfupdown is ifupdown with isc-dhcp-client, as a stock server
	// install leaves it: /etc/network/interfaces with `auto IF` and
	// `iface IF inet dhcp`, networking.service enabled.
	NetIfupdown NetStack = "ifupdown"
	// NetNetworkd is systemd-networkd enabled (with its socket and
	// systemd-networkd-wait-online), with a .network file matching the NIC
	// by name with DHCP=yes, and ifupdown's networking.service disabled.
	NetNetworkd NetStack = "networkd"
	// NetNetworkManager is NetworkManager with its default configuration,
	// which manages every ethernet device, next to ifupdown handling only
	// the loopback, as a stock desktop install leaves them.
	NetNetworkManager NetStack = "networkmanager"
)

// NetStacks returns every NetStack.
func NetStacks() []NetStack { return []NetStack{NetIfupdown, NetNetworkd, NetNetworkManager} }

// Service is the systemd unit that runs the stack, the one an
// administrator restarts.
func (s NetStack) Service() string {
	switch s {
	case NetIfupdown:
		return "networking.service"
	case NetNetworkd:
		return "systemd-networkd.service"
	case NetNetworkManager:
		return "NetworkManager.service"
	}
	return ""
}

// interfacesHead is what Debian's installer writes at the top of
// /etc/network/interfaces: the include and the loopback.
const interfacesHead = `# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
`

// NetworkdFile is where NetNetworkd's .network file goes in the root.
const NetworkdFile = "etc/systemd/network/20-wired.network"

// Configure sets the stack up in the tree at root (a DebianCopy) for the
// NIC named ifname, and disables the other stacks' services.
func (s NetStack) Configure(t testing.TB, root, ifname string) {
	t.Helper()
	interfaces := interfacesHead
	switch s {
	case NetIfupdown:
		interfaces += fmt.Sprintf("\n# The primary network interface\nauto %s\niface %s inet dhcp\n", ifname, ifname)
		Systemctl(t, root, "disable", "NetworkManager.service")
	case NetNetworkd:
		ReplaceFile(t, root, NetworkdFile, fmt.Appendf(nil, "[Match]\nName=%s\n\n[Network]\nDHCP=yes\n", ifname), 0o644)
		Systemctl(t, root, "disable", "networking.service", "NetworkManager.service")
		Systemctl(t, root, "enable", "systemd-networkd.service")
	case NetNetworkManager:
		// NetworkManager's own default: it manages the NIC, ifupdown
		// only the loopback.
	default:
		t.Fatalf("testrig: unknown network stack %q", s)
	}
	ReplaceFile(t, root, "etc/network/interfaces", []byte(interfaces), 0o644)
}
