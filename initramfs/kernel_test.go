package initramfs

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// requireReal skips a test that needs a file of the real Debian kernel when
// it is absent, or fails it when CI is set (CI must have the kernel).
func requireReal(t *testing.T, what string, found bool) {
	t.Helper()
	if found {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is absent and CI is set (install linux-image-amd64)", what)
	}
	t.Skipf("skipping: %s is absent (install linux-image-amd64)", what)
}

// fakeBzImage returns the first bytes of a bzImage whose setup header
// points at version.
func fakeBzImage(version string) []byte {
	img := make([]byte, 0x2000)
	binary.LittleEndian.PutUint16(img[bootFlagOffset:], 0xAA55)
	copy(img[headerMagicOffset:], "HdrS")
	binary.LittleEndian.PutUint16(img[protocolOffset:], 0x020f)
	binary.LittleEndian.PutUint16(img[kernelVersionOffset:], 0x1000)
	copy(img[0x1200:], version+"\x00")
	return img
}

func TestKernelVersionSynthetic(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("vmlinuz", fakeBzImage("6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2"))
	if v, err := KernelVersion(good); err != nil || v != "6.1.0-56-amd64" {
		t.Errorf("KernelVersion = %q, %v; want 6.1.0-56-amd64", v, err)
	}

	noMagic := fakeBzImage("6.1.0")
	copy(noMagic[headerMagicOffset:], "XXXX")
	noPtr := fakeBzImage("6.1.0")
	binary.LittleEndian.PutUint16(noPtr[kernelVersionOffset:], 0)
	oldProto := fakeBzImage("6.1.0")
	binary.LittleEndian.PutUint16(oldProto[protocolOffset:], 0x0100)
	unterminated := fakeBzImage(strings.Repeat("6", 0x2000-0x1200))
	unterminated = unterminated[:0x2000]
	empty := fakeBzImage("   ")
	binaryJunk := fakeBzImage("\x01\x02 rest")
	bad := map[string][]byte{
		"no HdrS":            noMagic,
		"no kernel_version":  noPtr,
		"protocol 1.00":      oldProto,
		"not NUL-terminated": unterminated,
		"does not start":     empty,
		"junk":               binaryJunk,
		"short file":         []byte("MZ"),
	}
	for name, data := range bad {
		p := write(strings.ReplaceAll(name, " ", "_"), data)
		v, err := KernelVersion(p)
		if err == nil {
			t.Errorf("%s: KernelVersion = %q, want an error", name, v)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	if _, err := KernelVersion(filepath.Join(dir, "absent")); err == nil || !strings.Contains(err.Error(), "absent") {
		t.Errorf("absent file: error %v does not name it", err)
	}
}

func TestKernelVersionDebian(t *testing.T) {
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	requireReal(t, "/boot/vmlinuz-*", len(images) > 0)
	for _, img := range images {
		v, err := KernelVersion(img)
		if err != nil {
			t.Errorf("KernelVersion(%s): %v", img, err)
			continue
		}
		if want := strings.TrimPrefix(filepath.Base(img), "vmlinuz-"); v != want {
			t.Errorf("KernelVersion(%s) = %q, want %q", img, v, want)
		}
	}
}

func TestBzImageVersionReader(t *testing.T) {
	v, err := bzImageVersion(bytes.NewReader(fakeBzImage("6.12.3\x00")))
	if err != nil || v != "6.12.3" {
		t.Errorf("bzImageVersion = %q, %v; want 6.12.3", v, err)
	}
}
