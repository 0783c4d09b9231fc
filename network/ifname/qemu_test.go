package ifname

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/initramfs"
	"github.com/nbdroot/nbdroot/internal/poll"
	"github.com/nbdroot/nbdroot/internal/testrig"
	"github.com/nbdroot/nbdroot/network/rtnl"
	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// guestEnv, set on the guest's kernel command line (the kernel hands it to
// /init as an environment variable), names the machine TestInGuest runs on.
const guestEnv = "IFNAME_IN_GUEST"

// guestMarker starts the lines TestInGuest prints for the host to check.
const guestMarker = "IFNAME-GUEST: "

// guestMachine is a QEMU machine with NICs, and the names systemd v252's
// udev gives them (each checked with udevadm test-builtin net_id in the
// guest when this table was written).
type guestMachine struct {
	qemu []string          // -M and -device arguments
	want map[string]string // PCI function → predictable name
	up   string            // the PCI function whose link is up before RenameAll
}

var guestMachines = map[string]guestMachine{
	"pc": {
		qemu: []string{"-M", "pc",
			"-device", "virtio-net-pci,netdev=n1,addr=3",
			"-device", "e1000,netdev=n2,addr=5",
			"-device", "virtio-net-pci,netdev=n3,addr=6.0,multifunction=on",
			"-device", "virtio-net-pci,netdev=n4,addr=6.1",
			"-device", "virtio-net-pci,netdev=n5,addr=7,acpi-index=9",
			"-device", "pci-bridge,id=br1,chassis_nr=1,addr=8",
			"-device", "virtio-net-pci,netdev=n6,bus=br1,addr=2",
		},
		want: map[string]string{
			"0000:00:03.0": "ens3", "0000:00:05.0": "ens5",
			"0000:00:06.0": "ens6f0", "0000:00:06.1": "ens6f1",
			"0000:00:07.0": "eno9", "0000:01:02.0": "enp1s2",
		},
		up: "0000:00:05.0",
	},
	"q35": {
		qemu: []string{"-M", "q35",
			"-device", "pcie-root-port,id=rp1,chassis=1,slot=1,addr=2.0",
			"-device", "virtio-net-pci,netdev=n1,bus=rp1",
			"-device", "pcie-root-port,id=rp2,chassis=2,slot=2,addr=3.0,multifunction=on",
			"-device", "pcie-root-port,id=rp3,chassis=3,slot=3,addr=3.1",
			"-device", "e1000e,netdev=n2,bus=rp2",
			"-device", "virtio-net-pci,netdev=n3,bus=rp3,addr=0.0,multifunction=on",
			"-device", "virtio-net-pci,netdev=n4,bus=rp3,addr=0.1",
			"-device", "virtio-net-pci,netdev=n5,addr=5",
			"-device", "e1000e,netdev=n6,addr=6",
		},
		want: map[string]string{
			"0000:01:00.0": "enp1s0", "0000:02:00.0": "enp2s0",
			"0000:03:00.0": "enp3s0f0", "0000:03:00.1": "enp3s0f1",
			"0000:00:05.0": "enp0s5", "0000:00:06.0": "enp0s6",
		},
		up: "0000:00:06.0",
	},
}

// guestModules are the NIC drivers the machines need.
var guestModules = []string{"virtio_pci", "virtio_net", "e1000", "e1000e"}

// TestQEMUGuests boots the Debian kernel under QEMU on i440fx and q35
// machines with NICs in hotplug slots, multi-function devices, behind
// bridges and root ports, with an ACPI index; the guest's /init is this
// test binary running TestInGuest.
func TestQEMUGuests(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU: skipped with -short")
	}
	if os.Getenv(guestEnv) != "" {
		t.Skip("in the guest")
	}
	testrig.Need(t, "qemu-system-x86_64", "go")
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("no kernel in /boot: run make deps")
		}
		t.Skip("no kernel in /boot (apt-get install linux-image-amd64)")
	}
	sort.Strings(kernels)
	kernel := kernels[len(kernels)-1]
	dir := t.TempDir()

	bin := filepath.Join(dir, "ifname.test")
	cmd := exec.Command("go", "test", "-c", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "initramfs.img")
	w, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	_, err = initramfs.Write(context.Background(), w, initramfs.Options{
		Binary:        bin,
		KernelVersion: strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-"),
		BaseModules:   []string{},
		Modules:       guestModules,
	})
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("initramfs: %v", err)
	}

	for _, name := range []string{"pc", "q35"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			argv := []string{"qemu-system-x86_64", "-accel", "tcg", "-m", "512",
				"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
				"-kernel", kernel, "-initrd", img,
				"-append", "console=ttyS0 panic=-1 quiet " + guestEnv + "=" + name +
					" -- -test.run=^TestInGuest$ -test.v -test.timeout=150s"}
			for i := 1; i <= 6; i++ {
				argv = append(argv, "-netdev", fmt.Sprintf("user,id=n%d", i))
			}
			argv = append(argv, guestMachines[name].qemu...)
			p := testrig.Start(t, argv...)
			t0 := time.Now()
			if err := p.Wait(3 * time.Minute); err != nil {
				t.Fatalf("guest: %v\n%s", err, p.Output())
			}
			out := strings.ReplaceAll(p.Output(), "\r\n", "\n")
			t.Logf("guest ran for %v", time.Since(t0).Round(100*time.Millisecond))
			if !strings.Contains(out, guestMarker+"done ok=true") || strings.Contains(out, guestMarker+"FAIL") {
				t.Errorf("the guest's checks failed:\n%s", out)
			}
			for _, l := range regexp.MustCompile(`(?m)^`+guestMarker+`.*$`).FindAllString(out, -1) {
				t.Log(l)
			}
		})
	}
}

// TestInGuest is the guest's side of TestQEMUGuests: the names computed on
// the real sysfs, then RenameAll over the real rtnetlink. It powers the guest
// off at the end.
func TestInGuest(t *testing.T) {
	machine := os.Getenv(guestEnv)
	if machine == "" {
		t.Skip("runs as /init of the QEMU guest TestQEMUGuests boots")
	}
	ok := true
	fail := func(format string, a ...any) {
		ok = false
		msg := fmt.Sprintf(format, a...)
		fmt.Println(guestMarker + "FAIL: " + msg)
		t.Error(msg)
	}
	defer func() {
		fmt.Printf("%sdone ok=%v\n", guestMarker, ok)
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}()
	m, known := guestMachines[machine]
	if !known {
		fail("unknown machine %q", machine)
		return
	}
	for _, mnt := range []struct{ dir, fstype string }{{"/proc", "proc"}, {"/sys", "sysfs"}, {"/dev", "devtmpfs"}} {
		_ = os.MkdirAll(mnt.dir, 0o755)
		if err := unix.Mount(mnt.fstype, mnt.dir, mnt.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			fail("mount %s: %v", mnt.dir, err)
		}
	}
	for _, mod := range guestModules {
		if err := kmodule.Probe(mod, ""); err != nil {
			fail("loading %s: %v", mod, err)
		}
	}
	ctx := context.Background()
	var links map[string]string // PCI function → kernel name
	err := poll.For(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		links = linksByPCI()
		return len(links) == len(m.want), nil
	})
	if err != nil {
		fail("waiting for %d links: have %v: %v", len(m.want), links, err)
		return
	}
	for addr, want := range m.want {
		got, err := Predictable(Options{}, links[addr])
		ids, _ := NetID(Options{}, links[addr])
		fmt.Printf("%s%s %s: %+v → %s\n", guestMarker, addr, links[addr], ids, got)
		if err != nil || got != want {
			fail("Predictable(%s at %s) = %q, %v; want %q", links[addr], addr, got, err, want)
		}
	}

	up, err := rtnl.LinkByName(links[m.up])
	if err == nil {
		err = rtnl.SetUp(up.Index)
	}
	if err != nil {
		fail("setting %s up: %v", links[m.up], err)
		return
	}
	// The premise: this kernel refuses to rename a link that is up.
	err = rtnl.SetName(up.Index, "upname")
	fmt.Printf("%srenaming %s while up: %v\n", guestMarker, links[m.up], err)
	if !errors.Is(err, unix.EBUSY) {
		fail("renaming an up link: %v, want EBUSY", err)
	}

	renames, err := RenameAll(ctx, Options{})
	var le *LinkError
	if !errors.As(err, &le) || le.Link != links[m.up] || !errors.Is(err, ErrLinkUp) || strings.Count(err.Error(), "\n") != 0 {
		fail("RenameAll: %v; want only %s's *LinkError wrapping ErrLinkUp", err, links[m.up])
	}
	if len(renames) != len(m.want)-1 {
		fail("RenameAll renamed %d links, want %d: %+v", len(renames), len(m.want)-1, renames)
	}
	after := linksByPCI()
	for addr, want := range m.want {
		if addr == m.up {
			want = links[addr]
		}
		if after[addr] != want {
			fail("after RenameAll, %s is %q, want %q", addr, after[addr], want)
		}
	}
	fmt.Printf("%srenamed %+v\n", guestMarker, renames)
}

// linksByPCI maps the PCI function of each link in /sys/class/net to the
// link's name.
func linksByPCI() map[string]string {
	s, err := Options{}.sysfs()
	if err != nil {
		return nil
	}
	names, _ := readDirNames(filepath.Join(s.root, "class/net"))
	links := map[string]string{}
	for _, n := range names {
		d, err := s.netDevice(n)
		if err != nil {
			continue
		}
		p, ok := s.parent(d)
		for ok && s.subsystem(p) == "virtio" {
			p, ok = s.parent(p)
		}
		if ok && s.subsystem(p) == "pci" {
			links[p.sysname()] = n
		}
	}
	return links
}
