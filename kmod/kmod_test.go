package kmod

import (
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"golang.org/x/sys/unix"
)

// aliasCases are modules.alias patterns as Debian's 6.1 tree has them and
// modaliases as a QEMU guest's sysfs shows them.
var aliasCases = []struct {
	pattern, name string
	want          bool
}{
	{"pci:v00001AF4d00001000sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true},
	{"pci:v00001AF4d00001000sv*sd*bc*sc*i*", "pci:v00001AF4d00001005sv00001AF4sd00000004bc00scFFi00", false},
	{"pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001005sv00001AF4sd00000004bc00scFFi00", true},
	{"pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", true},
	{"virtio:d00000001v*", "virtio:d00000001v00001AF4", true},
	{"virtio:d00000001v*", "virtio:d00000004v00001AF4", false},
	{"acpi*:PNP0A03:*", "acpi:PNP0A03:", true},
	{"acpi*:PNP0A03:*", "platform:serial8250", false},
	{"crypto-crc32c", "crypto_crc32c", false},
	{"crypto_crc32c", "crypto_crc32c", true},
	{"fs-ext4", "fs_ext4", false},
	{"x86cpu:vendor:*:family:*:model:*:feature:*0081*", "x86cpu:vendor:0000:family:000F:model:006B:feature:,0000,0001,0081,", true},
	{`esc\*ape`, "esc*ape", true},
	{`esc\*ape`, "escXape", false},
	{"[ab]lias", "blias", true},
	{"", "", true},
	{"", "x", false},
}

func TestAliasMatches(t *testing.T) {
	for _, tc := range aliasCases {
		if got := newAlias(tc.pattern, "m").matches(tc.name); got != tc.want {
			t.Errorf("alias %q matches %q = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

// FuzzAliasMatches checks that the literal-prefix shortcut never changes
// path.Match's answer.
func FuzzAliasMatches(f *testing.F) {
	for _, tc := range aliasCases {
		f.Add(tc.pattern, tc.name)
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		want, err := path.Match(pattern, name)
		if err != nil {
			want = false
		}
		if got := newAlias(pattern, "m").matches(name); got != want {
			t.Errorf("alias %q matches %q = %v, path.Match says %v", pattern, name, got, want)
		}
	})
}

// tree writes a module tree as depmod leaves it, and a sysfs with the
// given modaliases, and returns a Modules over them that records its
// insertions instead of making them.
func tree(t *testing.T, fail map[string]error, modaliases ...string) (*Modules, *[]string) {
	t.Helper()
	dir, sys := t.TempDir(), t.TempDir()
	files := map[string]string{
		"modules.dep": "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n" +
			"kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n" +
			"kernel/crypto/crc32c_generic.ko.xz:\n" +
			"kernel/arch/x86/crypto/crc32c-intel.ko:\n" +
			"kernel/drivers/block/nbd.ko:\n" +
			"kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko\n" +
			"kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n" +
			"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n" +
			"kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n",
		"modules.builtin": "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n",
		"modules.alias": "alias fs-ext4 ext4\nalias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n" +
			"alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\n" +
			"alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000001v* virtio_net\n",
		"modules.softdep": "softdep ext4 pre: crypto-crc32c\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, a := range modaliases {
		d := filepath.Join(sys, "bus", strings.Split(a, ":")[0], "devices", strconv.Itoa(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "modalias"), []byte(a+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var got []string
	insert := func(file string) error {
		rel, err := filepath.Rel(dir, file)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, rel)
		return fail[rel]
	}
	return open(bootlog.New(io.Discard, time.Now()), dir, sys, insert), &got
}

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name  string
		load  []string
		fail  map[string]error
		want  []string
		count int
	}{
		{"dependencies last first, soft dependency first of all", []string{"ext4"}, nil,
			[]string{"kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/crypto/crc32c_generic.ko.xz",
				"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko"}, 3},
		{"no hardware for one alias", []string{"ext4"}, map[string]error{"kernel/arch/x86/crypto/crc32c-intel.ko": unix.ENODEV},
			[]string{"kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/crypto/crc32c_generic.ko.xz",
				"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko"}, 2},
		{"an alias", []string{"fs-ext4"}, nil,
			[]string{"kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/crypto/crc32c_generic.ko.xz",
				"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko"}, 3},
		{"a shared dependency once", []string{"virtio_net", "net_failover"}, nil,
			[]string{"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}, 2},
		{"already in the kernel", []string{"nbd"}, map[string]error{"kernel/drivers/block/nbd.ko": unix.EEXIST},
			[]string{"kernel/drivers/block/nbd.ko"}, 1},
		{"a failed dependency stops its module", []string{"ext4"}, map[string]error{"kernel/fs/mbcache.ko": unix.ENOEXEC},
			[]string{"kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/crypto/crc32c_generic.ko.xz",
				"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko"}, 2},
		{"built in, unknown, twice", []string{"virtio", "virtio-ring", "e1000e", "nbd", "nbd"}, nil,
			[]string{"kernel/drivers/block/nbd.ko"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, got := tree(t, tc.fail)
			m.Load(tc.load...)
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("inserted\n%q\nwant\n%q", *got, tc.want)
			}
			if m.Loaded() != tc.count {
				t.Errorf("Loaded() = %d, want %d", m.Loaded(), tc.count)
			}
		})
	}
}

// TestLoadForThisCPU loads ext4, whose soft dependency crypto-crc32c names
// crc32c_intel and crc32c_generic, on CPUs with and without SSE4.2
// (feature 0094): crc32c_intel is skipped where it cannot serve, and a
// module named by itself is still inserted.
func TestLoadForThisCPU(t *testing.T) {
	generic := []string{"kernel/crypto/crc32c_generic.ko.xz",
		"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko"}
	for _, tc := range []struct {
		name, cpu string
		load      []string
		want      []string
	}{
		{"SSE4.2", "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0093,0094,0095\n", []string{"ext4"},
			append([]string{"kernel/arch/x86/crypto/crc32c-intel.ko"}, generic...)},
		{"no SSE4.2", "cpu:type:x86,ven0002fam000Fmod006B:feature:,0000,0001,0093\n", []string{"ext4"}, generic},
		{"no CPU modalias", "", []string{"ext4"}, append([]string{"kernel/arch/x86/crypto/crc32c-intel.ko"}, generic...)},
		{"by name", "cpu:type:x86,ven0002fam000Fmod006B:feature:,0000\n", []string{"crc32c_intel"},
			[]string{"kernel/arch/x86/crypto/crc32c-intel.ko"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, got := tree(t, nil)
			if tc.cpu != "" {
				d := filepath.Join(m.sys, "devices/system/cpu")
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, "modalias"), []byte(tc.cpu), 0o444); err != nil {
					t.Fatal(err)
				}
			}
			m.Load(tc.load...)
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("inserted\n%q\nwant\n%q", *got, tc.want)
			}
		})
	}
}

func TestLoadConcurrent(t *testing.T) {
	m, got := tree(t, nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.insertWithDeps("virtio_net", m.paths["virtio_net"])
		}()
	}
	wg.Wait()
	if len(*got) != 3 {
		t.Errorf("inserted %q, want each of the three files once", *got)
	}
}

func TestColdplug(t *testing.T) {
	m, got := tree(t, nil, "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "pci:v00008086d00007000sv00000000sd00000000bc06sc01i00", "acpi:PNP0A03:")
	// The bus driver reveals the virtio device, as virtio_pci does.
	insert := m.insert
	m.insert = func(file string) error {
		if strings.HasSuffix(file, "/virtio_pci.ko") {
			d := filepath.Join(m.sys, "bus", "virtio", "devices", "virtio0")
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, "modalias"), []byte("virtio:d00000001v00001AF4\n"), 0o444); err != nil {
				t.Fatal(err)
			}
		}
		return insert(file)
	}
	m.Coldplug()
	want := []string{"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("inserted\n%q\nwant\n%q", *got, want)
	}
}

func TestNoTree(t *testing.T) {
	m := open(bootlog.New(io.Discard, time.Now()), "", t.TempDir(), nil)
	m.Load("nbd")
	m.Coldplug()
	if m.Loaded() != 0 {
		t.Errorf("Loaded() = %d without a module tree", m.Loaded())
	}
}
