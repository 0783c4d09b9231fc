package ifname

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgainstUdevadm compares NetID with udev's own net_id builtin on this
// machine's real sysfs, link by link. What it covers depends on the host's
// NICs (this rig's host has a virtio-net NIC at 0000:00:03.0 and no hotplug
// slots: enp0s3), so a missing udevadm skips it even in CI.
func TestAgainstUdevadm(t *testing.T) {
	udevadm, err := exec.LookPath("udevadm")
	if err != nil {
		t.Skip("udevadm not in PATH: cannot compare with udev's net_id on this host (not required in CI: the host's NICs vary)")
	}
	links, err := filepath.Glob("/sys/class/net/*")
	if err != nil || len(links) == 0 {
		t.Skipf("no links in /sys/class/net (%v)", err)
	}
	compared := 0
	for _, l := range links {
		name := filepath.Base(l)
		cmd := exec.Command(udevadm, "test-builtin", "net_id", l)
		// Newer udev honours the scheme asked for; v252 is what we follow.
		cmd.Env = append(os.Environ(), "NET_NAMING_SCHEME=v252")
		out, err := cmd.Output()
		if err != nil {
			t.Logf("%s: udevadm test-builtin net_id: %v", name, err)
			continue
		}
		props := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				props[k] = v
			}
		}
		if s := props["ID_NET_NAMING_SCHEME"]; s != "" && s != "v252" {
			t.Logf("%s: udevadm used naming scheme %s, not v252: not compared", name, s)
			continue
		}
		want := IDs{Onboard: props["ID_NET_NAME_ONBOARD"], Slot: props["ID_NET_NAME_SLOT"], Path: props["ID_NET_NAME_PATH"]}
		got, err := NetID(Options{}, name)
		if err != nil {
			t.Errorf("NetID(%s): %v", name, err)
			continue
		}
		if got != want {
			t.Errorf("%s: NetID = %+v, udevadm says %+v", name, got, want)
		}
		t.Logf("%s: %+v (udevadm agrees)", name, got)
		compared++
	}
	if compared == 0 {
		t.Skip("udevadm named no link here: nothing compared")
	}
}
