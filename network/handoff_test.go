package network

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestHandoff(t *testing.T) {
	lease := &Lease{Interface: "eth0", HardwareAddr: "52:54:00:12:34:56"}
	const etc, lib = "etc/systemd/network/", "usr/lib/systemd/network/"
	for _, tc := range []struct {
		name  string
		files map[string]string // path in the root → content; "->TARGET" makes a symbolic link
		want  []string          // files written under /run
	}{
		{"nothing", nil, nil},
		{"name matches", map[string]string{etc + "10-eth.network": "[Match]\nName=eth0\n[Network]\nDHCP=yes\n"},
			[]string{"systemd/network/10-eth.network.d/50-nbdroot-root.conf"}},
		{"glob list matches", map[string]string{etc + "10-eth.network": "[Match]\nName=en* eth*\n"},
			[]string{"systemd/network/10-eth.network.d/50-nbdroot-root.conf"}},
		{"name does not match", map[string]string{etc + "10-ens.network": "[Match]\nName=ens*\n"}, nil},
		{"inverted list", map[string]string{etc + "a.network": "[Match]\nName=!eth0\n", etc + "b.network": "[Match]\nName=!lo wl*\n"},
			[]string{"systemd/network/b.network.d/50-nbdroot-root.conf"}},
		{"empty assignment resets", map[string]string{etc + "a.network": "[Match]\nName=ens3\nName=\nName=eth*\n"},
			[]string{"systemd/network/a.network.d/50-nbdroot-root.conf"}},
		{"MAC address", map[string]string{etc + "a.network": "[Match]\nMACAddress=52:54:00:12:34:56\n", etc + "b.network": "[Match]\nMACAddress=52:54:00:ff:ff:ff\n",
			etc + "c.network": "[Match]\nMACAddress=52:54:00:FF:ff:ff 52:54:00:12:34:56\n"},
			[]string{"systemd/network/a.network.d/50-nbdroot-root.conf", "systemd/network/c.network.d/50-nbdroot-root.conf"}},
		{"type", map[string]string{etc + "wlan.network": "[Match]\nType=wlan\n", etc + "ether.network": "[Match]\nType=ether\nName=e*\n"},
			[]string{"systemd/network/ether.network.d/50-nbdroot-root.conf"}},
		{"keys it cannot judge count as a match", map[string]string{lib + "80-virt.network": "[Match]\nDriver=virtio_net\nPath=pci-*\n"},
			[]string{"systemd/network/80-virt.network.d/50-nbdroot-root.conf"}},
		{"no [Match] matches everything", map[string]string{etc + "all.network": "[Network]\nDHCP=yes\n"},
			[]string{"systemd/network/all.network.d/50-nbdroot-root.conf"}},
		{"other sections do not count", map[string]string{etc + "a.network": "[Match]\nName=eth0\n[Link]\nName=wl0\n"},
			[]string{"systemd/network/a.network.d/50-nbdroot-root.conf"}},
		{"masked in /etc", map[string]string{etc + "99-default.network": "->/dev/null", lib + "99-default.network": "[Match]\nName=*\n"}, nil},
		{"/etc overrides by name", map[string]string{etc + "x.network": "[Match]\nName=ens3\n", lib + "x.network": "[Match]\nName=eth0\n"}, nil},
		{"absolute link inside the root", map[string]string{etc + "x.network": "->/usr/lib/systemd/network/y.network", lib + "y.network": "[Match]\nName=eth0\n"},
			[]string{"systemd/network/x.network.d/50-nbdroot-root.conf", "systemd/network/y.network.d/50-nbdroot-root.conf"}},
		{"NetworkManager", map[string]string{"etc/NetworkManager/NetworkManager.conf": "[main]\nplugins=ifupdown,keyfile\n"},
			[]string{"NetworkManager/conf.d/90-nbdroot-root.conf"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, run := t.TempDir(), t.TempDir()
			for p, content := range tc.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				var err error
				if target, ok := strings.CutPrefix(content, "->"); ok {
					err = os.Symlink(target, full)
				} else {
					err = os.WriteFile(full, []byte(content), 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := Handoff(root, run, lease)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("wrote %q, want %q", got, tc.want)
			}
			for _, rel := range got {
				b, err := os.ReadFile(filepath.Join(run, rel))
				if err != nil {
					t.Fatal(err)
				}
				want := "KeepConfiguration=yes\n"
				if strings.HasPrefix(rel, "NetworkManager") {
					want = "[keyfile]\nunmanaged-devices+=interface-name:eth0;mac:52:54:00:12:34:56\n"
				}
				if !strings.Contains(string(b), want) {
					t.Errorf("%s:\n%s\nwant it to contain %q", rel, b, want)
				}
			}
		})
	}
	if got, err := Handoff(t.TempDir(), t.TempDir(), &Lease{}); err != nil || got != nil {
		t.Errorf("Handoff with no network = %v, %v; want nothing", got, err)
	}
}
