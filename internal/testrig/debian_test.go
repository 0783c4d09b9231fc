package testrig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebianKey: the cache key follows every input of the tree and nothing
// else.
func TestDebianKey(t *testing.T) {
	a, b := DebianKey("6.1.0-57-amd64"), DebianKey("6.1.0-58-amd64")
	if a == b {
		t.Fatalf("the key ignores the kernel release: %s", a)
	}
	if a != DebianKey("6.1.0-57-amd64") {
		t.Fatalf("the key is not stable")
	}
	if len(a) != 16 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Fatalf("key %q is not 16 hex digits", a)
	}
}

// TestDebianRoot builds (or finds in the cache) the Debian root and checks,
// on a private copy, what the tests rely on: systemd as init, the kernel's
// modules where an installed kernel leaves them, the three stacks' tools,
// and each stack's configuration and enabled units.
func TestDebianRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("building a Debian root is skipped with -short")
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("no kernel in /boot: run make deps")
		}
		t.Skip("no kernel in /boot: run make deps")
	}
	release := strings.TrimPrefix(filepath.Base(kernels[len(kernels)-1]), "vmlinuz-")
	root := DebianRoot(t, release)
	for _, p := range []string{
		"sbin/init", "usr/sbin/ifup", "sbin/dhclient", "usr/sbin/NetworkManager",
		"lib/systemd/systemd-networkd", "lib/modules/" + release + "/modules.dep",
		"lib/modules/" + release + "/kernel/drivers/block/nbd.ko",
	} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("root: %v", err)
		}
	}
	wants := func(dir, unit string) bool {
		_, err := os.Lstat(filepath.Join(dir, "etc/systemd/system/multi-user.target.wants", unit))
		return err == nil
	}
	for _, s := range NetStacks() {
		t.Run(string(s), func(t *testing.T) {
			dir := DebianCopy(t, root)
			s.Configure(t, dir, "ens9")
			ifaces, err := os.ReadFile(filepath.Join(dir, "etc/network/interfaces"))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Contains(string(ifaces), "iface ens9 inet dhcp"), s == NetIfupdown; got != want {
				t.Errorf("interfaces configures ens9: %v, want %v\n%s", got, want, ifaces)
			}
			for _, u := range NetStacks() {
				if got, want := wants(dir, u.Service()), u == s || (s == NetNetworkManager && u == NetIfupdown); got != want {
					t.Errorf("%s enabled: %v, want %v", u.Service(), got, want)
				}
			}
			if s == NetNetworkd {
				b, err := os.ReadFile(filepath.Join(dir, NetworkdFile))
				if err != nil || !strings.Contains(string(b), "Name=ens9") || !strings.Contains(string(b), "DHCP=yes") {
					t.Errorf("%s: %q, %v", NetworkdFile, b, err)
				}
			}
		})
	}
	// The copies never wrote through their hard links.
	if b, err := os.ReadFile(filepath.Join(root, "etc/network/interfaces")); err != nil || strings.Contains(string(b), "ens9") {
		t.Errorf("the shared tree's interfaces changed: %q, %v", b, err)
	}
	if wants(root, "systemd-networkd.service") || !wants(root, "NetworkManager.service") {
		t.Errorf("the shared tree's enabled units changed")
	}
}
