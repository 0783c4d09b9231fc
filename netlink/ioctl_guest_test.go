package netlink

// The ioctl attach path (package ioctl) checked in the same guest, with the
// same test server: it has no kernel tests of its own, and the two
// interfaces share the driver's state.

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/ioctl"
	"github.com/nbdroot/nbdroot/nbddev"
)

// serveIoctl attaches a fresh connection to s on the first free device with
// ioctl.Device.Serve and waits until the device is live.
func serveIoctl(t *testing.T, s *memServer) (int, *ioctl.Device, *kernelSide, <-chan error) {
	t.Helper()
	index, err := (nbddev.Sysfs{}).FirstFree()
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ioctl.Open(index)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	k := s.connect(t)
	p := ioctl.Params{Size: k.export.Size, BlockSize: 512, Flags: uint16(k.export.Flags)}
	done := make(chan error, 1)
	go func() { done <- dev.Serve(k.fd(), p, nil) }()
	waitFor(t, 5*time.Second, "Sysfs.Live", func() bool {
		select {
		case err := <-done:
			t.Fatalf("Serve returned before the device was live: %v", err)
		default:
		}
		return (nbddev.Sysfs{}).Live(index)
	})
	return index, dev, k, done
}

func TestGuestIoctlServe(t *testing.T) {
	c := needGuest(t)
	s := newMemServer(t, 1<<20, flagSendFlush)
	index, dev, _, done := serveIoctl(t, s)
	t.Logf("ioctl attach on /dev/nbd%d", index)

	f := openDev(t, index)
	got, err := readAt(f, 8192, 4096)
	if err != nil || !bytes.Equal(got, s.snapshot(8192, 4096)) {
		t.Fatalf("read through the ioctl device: %v, or data differs", err)
	}
	if err := writeAt(f, 16384, bytes.Repeat([]byte{0x5a}, 4096)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(s.snapshot(16384, 4096), bytes.Repeat([]byte{0x5a}, 4096)) {
		t.Fatal("the write did not reach the server")
	}
	f.Close()

	// Netlink sees the ioctl device, and cannot take it over.
	if !connected(t, c, index) {
		t.Error("Status: the ioctl device is not connected")
	}
	if err := c.Reconfigure(index, Reconfig{Timeout: 5 * time.Second}); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Reconfigure of an ioctl device: %v, want EINVAL", err)
	}

	if err := dev.Disconnect(); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after a requested disconnect: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Disconnect")
	}
	stopped(t, index, dev)
}

// stopped checks that the device stops counting as in use once its
// configuring process closes it: the kernel removes the "pid" attribute
// only when the last reference to the configuration goes, and an open
// descriptor holds one.
func stopped(t *testing.T, index int, dev *ioctl.Device) {
	t.Helper()
	if !(nbddev.Sysfs{}).InUse(index) {
		t.Error("Sysfs.InUse is false while the device is still open; the kernel changed")
	}
	dev.Close()
	waitFor(t, 5*time.Second, "Sysfs.InUse false after the close", func() bool { return !(nbddev.Sysfs{}).InUse(index) })
}

func TestGuestIoctlServerGone(t *testing.T) {
	needGuest(t)
	s := newMemServer(t, 1<<20, 0)
	index, dev, k, done := serveIoctl(t, s)
	t0 := time.Now()
	k.cut()
	select {
	case err := <-done:
		t.Logf("ioctl: Serve returned %v after the server closed: %v", time.Since(t0).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the server closed the connection")
	}
	stopped(t, index, dev)
}
