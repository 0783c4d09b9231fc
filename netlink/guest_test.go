package netlink

// The TestGuest* tests talk to a real kernel's nbd driver. They need root, a
// kernel with nbd as a module, and a machine where breaking nbd devices is
// harmless, so they run only inside the QEMU guest that qemu-test's TestGuest
// boots (which sets NBDROOT_IN_GUEST=1). Everywhere else they skip.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/nbddev"
)

// inGuestEnv marks the QEMU guest of qemu-test's TestGuest.
const inGuestEnv = "NBDROOT_IN_GUEST"

// guestSetup is what TestMain found in the guest before the tests ran.
type guestSetup struct {
	dialBefore error // Dial before nbd.ko was loaded
	load       error // loading nbd.ko
}

// guest is set by TestMain in the guest only.
var guest *guestSetup

func TestMain(m *testing.M) {
	if os.Getenv(inGuestEnv) == "1" {
		guest = &guestSetup{}
		if c, err := Dial(); err == nil {
			c.Close()
		} else {
			guest.dialBefore = err
		}
		guest.load = loadNBD()
	}
	m.Run()
}

// loadNBD loads the running kernel's nbd.ko with 8 devices.
func loadNBD() error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	path := filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]), "kernel/drivers/block/nbd.ko")
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "nbds_max=8", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}

// needGuest skips outside the guest and returns a Client inside it.
func needGuest(t *testing.T) *Client {
	t.Helper()
	if guest == nil {
		t.Skipf("kernel test: runs only inside the QEMU guest of qemu-test's TestGuest (%s=1)", inGuestEnv)
	}
	if guest.load != nil {
		t.Fatalf("loading nbd: %v", guest.load)
	}
	c, err := Dial()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// attach connects /dev/nbd<cfg.Index> to n fresh connections to s and closes
// the test's descriptors at once: the kernel holds its own references.
func attach(t *testing.T, c *Client, s *memServer, cfg Config, n int) (int, []*kernelSide) {
	t.Helper()
	var ks []*kernelSide
	cfg.Sockets = nil
	for range n {
		k := s.connect(t)
		ks = append(ks, k)
		cfg.Sockets = append(cfg.Sockets, k.fd())
	}
	cfg.Size = ks[0].export.Size
	cfg.ServerFlags = uint64(ks[0].export.Flags)
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 512
	}
	index, err := c.Connect(cfg)
	for _, k := range ks {
		k.f.Close()
	}
	if err != nil {
		t.Fatalf("Connect(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(index) })
	return index, ks
}

// sysBlock reads /sys/block/nbdN/<attr>.
func sysBlock(t *testing.T, index int, attr string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", "nbd"+strconv.Itoa(index), attr))
	if err != nil {
		t.Fatalf("sysfs: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// openDev opens /dev/nbdN for direct I/O, so that every read and write
// reaches the driver instead of the page cache.
func openDev(t *testing.T, index int) *os.File {
	t.Helper()
	f, err := os.OpenFile(nbddev.Path(index), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// aligned returns an n-byte buffer aligned for O_DIRECT.
func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & 4095)
	return b[off : off+n]
}

func readAt(f *os.File, off int64, n int) ([]byte, error) {
	b := aligned(n)
	m, err := unix.Pread(int(f.Fd()), b, off)
	if err == nil && m != n {
		err = fmt.Errorf("short read: %d of %d bytes", m, n)
	}
	return b, err
}

func writeAt(f *os.File, off int64, data []byte) error {
	b := aligned(len(data))
	copy(b, data)
	m, err := unix.Pwrite(int(f.Fd()), b, off)
	if err == nil && m != len(b) {
		err = fmt.Errorf("short write: %d of %d bytes", m, len(b))
	}
	return err
}

// readResult is the outcome of a read started in the background.
type readResult struct {
	data []byte
	err  error
	at   time.Time
}

func goRead(f *os.File, off int64, n int) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b, err := readAt(f, off, n)
		ch <- readResult{b, err, time.Now()}
	}()
	return ch
}

// stillPending fails the test if the read completes within d.
func stillPending(t *testing.T, ch <-chan readResult, d time.Duration, why string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: the read completed (err %v) instead of waiting", why, r.err)
	case <-time.After(d):
	}
}

func await(t *testing.T, ch <-chan readResult, d time.Duration) readResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("the read did not complete within %v", d)
	}
	return readResult{}
}

// waitLinkDead waits for the link-dead event of /dev/nbd<index>.
func waitLinkDead(t *testing.T, events <-chan LinkDead, index int, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the link-dead channel closed")
			}
			if ev.Index == index {
				return
			}
			t.Logf("link-dead event for /dev/nbd%d (waiting for %d)", ev.Index, index)
		case <-deadline:
			t.Fatalf("no link-dead event for /dev/nbd%d within %v", index, d)
		}
	}
}

// waitFor polls cond every 10 ms for up to d and returns how long it took.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(t0)
}

// connected returns the kernel's "connected" for /dev/nbd<index>.
func connected(t *testing.T, c *Client, index int) bool {
	t.Helper()
	st, err := c.Status(index)
	if err != nil {
		t.Fatalf("Status(%d): %v", index, err)
	}
	if len(st) != 1 || st[0].Index != index {
		t.Fatalf("Status(%d) = %+v, want one entry for the device", index, st)
	}
	return st[0].Connected
}

func TestGuestFamilyAbsent(t *testing.T) {
	needGuest(t)
	if !errors.Is(guest.dialBefore, ErrNotSupported) {
		t.Fatalf("Dial before nbd.ko was loaded: %v, want ErrNotSupported", guest.dialBefore)
	}
	t.Logf("Dial before nbd.ko was loaded: %v", guest.dialBefore)
}

func TestGuestConnectOneSocket(t *testing.T) {
	c := needGuest(t)
	s := newMemServer(t, 4<<20, flagSendFlush|flagSendTrim)
	index, ks := attach(t, c, s, Config{Index: -1, BackendID: "guest-test"}, 1)
	k := ks[0]
	t.Logf("the kernel picked /dev/nbd%d", index)

	if got := sysBlock(t, index, "size"); got != strconv.Itoa(4<<20/512) {
		t.Errorf("size %s sectors, want %d", got, 4<<20/512)
	}
	if got := sysBlock(t, index, "backend"); got != "guest-test" {
		t.Errorf("backend %q, want guest-test", got)
	}
	if !(nbddev.Sysfs{}).Live(index) {
		t.Error("Sysfs.Live is false for a netlink-connected device")
	}
	if !connected(t, c, index) {
		t.Error("Status: not connected")
	}
	all, err := c.Status(-1)
	if err != nil {
		t.Fatalf("Status(-1): %v", err)
	}
	found := false
	for _, d := range all {
		found = found || d == DeviceStatus{Index: index, Connected: true}
	}
	if !found || len(all) < 8 {
		t.Errorf("Status(-1) = %+v, want 8 or more devices with %d connected", all, index)
	}

	f := openDev(t, index)
	got, err := readAt(f, 12288, 4096)
	if err != nil || !bytes.Equal(got, s.snapshot(12288, 4096)) {
		t.Fatalf("read through the device: %v, or data differs from the server's", err)
	}
	data := bytes.Repeat([]byte("nbdroot!"), 1024)
	if err := writeAt(f, 1<<20, data); err != nil {
		t.Fatalf("write through the device: %v", err)
	}
	if !bytes.Equal(s.snapshot(1<<20, len(data)), data) {
		t.Fatal("the write did not reach the server's memory")
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if n := s.count(k.id, nbdFlush); n == 0 {
		t.Error("fsync sent no NBD_CMD_FLUSH")
	}

	// A device with a backend identifier insists on it.
	err = c.Reconfigure(index, Reconfig{Timeout: 5 * time.Second})
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("Reconfigure without the backend identifier: %v, want EINVAL", err)
	}
	if err := c.Reconfigure(index, Reconfig{Timeout: 5 * time.Second, BackendID: "guest-test"}); err != nil {
		t.Errorf("Reconfigure with the backend identifier: %v", err)
	}

	f.Close()
	if err := c.Disconnect(index); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	d := waitFor(t, 5*time.Second, "Status after Disconnect", func() bool { return !connected(t, c, index) })
	t.Logf("Status reported the device disconnected %v after Disconnect returned", d.Round(time.Millisecond))
	waitFor(t, 5*time.Second, "NBD_CMD_DISC at the server", func() bool { return s.count(k.id, nbdDisc) == 1 })
	if (nbddev.Sysfs{}).InUse(index) {
		t.Error("Sysfs.InUse after Disconnect")
	}
	if err := c.Disconnect(index); err != nil {
		t.Errorf("Disconnect of a disconnected device: %v", err)
	}
}

func TestGuestConnectTwoSockets(t *testing.T) {
	c := needGuest(t)
	s := newMemServer(t, 2<<20, flagSendFlush|flagCanMultiConn)
	index, ks := attach(t, c, s, Config{Index: 1}, 2)
	if index != 1 {
		t.Fatalf("Connect(Index 1) returned %d", index)
	}
	if got := sysBlock(t, index, "size"); got != strconv.Itoa(2<<20/512) {
		t.Errorf("size %s sectors, want %d", got, 2<<20/512)
	}
	f := openDev(t, index)
	for i := range 8 {
		off := int64(i) * 65536
		got, err := readAt(f, off, 8192)
		if err != nil || !bytes.Equal(got, s.snapshot(int(off), 8192)) {
			t.Fatalf("read %d: %v, or data differs", i, err)
		}
	}
	if err := writeAt(f, 4096, bytes.Repeat([]byte{0xa5}, 4096)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(s.snapshot(4096, 4096), bytes.Repeat([]byte{0xa5}, 4096)) {
		t.Fatal("the write did not reach the server")
	}
	t.Logf("reads served per connection: %d, %d", s.count(ks[0].id, nbdRead), s.count(ks[1].id, nbdRead))
	f.Close()
	if err := c.Disconnect(index); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	for _, k := range ks {
		waitFor(t, 5*time.Second, "NBD_CMD_DISC on every connection", func() bool { return s.count(k.id, nbdDisc) == 1 })
	}

	// The kernel's own refusal of two sockets without
	// NBD_FLAG_CAN_MULTI_CONN (Connect refuses before asking).
	s2 := newMemServer(t, 1<<20, 0)
	a, b := s2.connect(t), s2.connect(t)
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, 6)
	ae.Uint64(attrSizeBytes, 1<<20)
	if err := encodeSockets(ae, []int{a.fd(), b.fd()}); err != nil {
		t.Fatal(err)
	}
	m, err := request(cmdConnect, ae)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.execute(m); !errors.Is(err, unix.EINVAL) {
		t.Errorf("raw CONNECT with two sockets, no CAN_MULTI_CONN: %v, want EINVAL", err)
	}
	if connected(t, c, 6) {
		t.Error("the refused device is connected")
	}
}

func TestGuestBusy(t *testing.T) {
	c := needGuest(t)
	s := newMemServer(t, 1<<20, flagSendFlush)
	index, _ := attach(t, c, s, Config{Index: 2}, 1)

	k := s.connect(t)
	_, err := c.Connect(Config{Index: index, Sockets: []int{k.fd()}, Size: 1 << 20, BlockSize: 512})
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Connect of a connected index: %v, want EBUSY saying the device is in use", err)
	}
	t.Logf("Connect of a connected index: %v", err)

	// A netlink-configured device refuses the setup ioctls.
	f, err := os.OpenFile(nbddev.Path(index), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), 0xab00 /* NBD_SET_SOCK */, uintptr(k.fd()))
	f.Close()
	if errno != unix.EINVAL {
		t.Errorf("NBD_SET_SOCK on a netlink device: %v, want EINVAL", errno)
	}

	// A device that is merely open is "connected" and refuses CONNECT.
	const idle = 3
	if connected(t, c, idle) {
		t.Fatalf("/dev/nbd%d is connected before the test", idle)
	}
	held, err := os.Open(nbddev.Path(idle))
	if err != nil {
		t.Fatal(err)
	}
	if !connected(t, c, idle) {
		t.Error("Status: a device held open is not reported connected")
	}
	_, err = c.Connect(Config{Index: idle, Sockets: []int{k.fd()}, Size: 1 << 20, BlockSize: 512})
	if !errors.Is(err, unix.EBUSY) {
		t.Errorf("Connect of a device held open: %v, want EBUSY", err)
	}
	held.Close()
	if connected(t, c, idle) {
		t.Error("Status: still connected after the last close")
	}
	got, err := c.Connect(Config{Index: idle, Sockets: []int{k.fd()}, Size: 1 << 20, BlockSize: 512})
	if err != nil || got != idle {
		t.Fatalf("Connect after the close: %d, %v", got, err)
	}
	if err := c.Disconnect(idle); err != nil {
		t.Error(err)
	}
}

func TestGuestLinkDeadReconfigure(t *testing.T) {
	c := needGuest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := c.WatchLinkDead(ctx)
	if err != nil {
		t.Fatalf("WatchLinkDead: %v", err)
	}
	s := newMemServer(t, 1<<20, flagSendFlush)
	const timeout = 3 * time.Second
	index, ks := attach(t, c, s, Config{Index: 4, Timeout: timeout, DeadConnTimeout: time.Minute}, 1)
	f := openDev(t, index)
	if _, err := readAt(f, 0, 4096); err != nil {
		t.Fatalf("first read: %v", err)
	}

	// The server goes away while the device is idle.
	t0 := time.Now()
	ks[0].cut()
	waitLinkDead(t, events, index, 10*time.Second)
	t.Logf("idle link: link-dead event %v after the server closed", time.Since(t0).Round(time.Millisecond))
	res := goRead(f, 65536, 4096)
	stillPending(t, res, time.Second, "dead link, dead connection timeout 1m")
	k2 := s.connect(t)
	if err := c.Reconfigure(index, Reconfig{Sockets: []int{k2.fd()}}); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	t1 := time.Now()
	k2.f.Close()
	r := await(t, res, 10*time.Second)
	if r.err != nil || !bytes.Equal(r.data, s.snapshot(65536, 4096)) {
		t.Fatalf("the read queued while the link was dead: %v, or data differs", r.err)
	}
	t.Logf("idle link: the queued read completed %v after Reconfigure", r.at.Sub(t1).Round(time.Millisecond))
	if !connected(t, c, index) {
		t.Error("Status: not connected after Reconfigure")
	}

	// The server goes away with a request in flight.
	s.setHold(true)
	res = goRead(f, 131072, 4096)
	select {
	case <-s.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the read never reached the server")
	}
	t0 = time.Now()
	k2.cut()
	waitLinkDead(t, events, index, 10*time.Second)
	t.Logf("in-flight request: link-dead event %v after the server closed", time.Since(t0).Round(time.Millisecond))
	stillPending(t, res, time.Second, "request in flight on a dead link")
	k3 := s.connect(t)
	if err := c.Reconfigure(index, Reconfig{Sockets: []int{k3.fd()}}); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	t1 = time.Now()
	k3.f.Close()
	r = await(t, res, 4*timeout)
	if r.err != nil || !bytes.Equal(r.data, s.snapshot(131072, 4096)) {
		t.Fatalf("the read in flight when the link died: %v, or data differs", r.err)
	}
	t.Logf("in-flight request (timeout %v): completed %v after the server closed, %v after Reconfigure",
		timeout, r.at.Sub(t0).Round(time.Millisecond), r.at.Sub(t1).Round(time.Millisecond))
	if n := s.count(k3.id, nbdRead); n == 0 {
		t.Error("the new connection served no read")
	}

	// RECONFIGURE with no dead connection: accepted, the socket unused.
	k4 := s.connect(t)
	if err := c.Reconfigure(index, Reconfig{Sockets: []int{k4.fd()}}); err != nil {
		t.Errorf("Reconfigure of a healthy device: %v", err)
	}
	before := s.count(k3.id, nbdRead)
	if _, err := readAt(f, 196608, 4096); err != nil {
		t.Fatalf("read after the extra Reconfigure: %v", err)
	}
	if s.count(k4.id, nbdRead) != 0 || s.count(k3.id, nbdRead) != before+1 {
		t.Errorf("reads: %d on the extra socket, %d more on the live one; want 0 and 1",
			s.count(k4.id, nbdRead), s.count(k3.id, nbdRead)-before)
	}
}

func TestGuestDeadConnTimeout(t *testing.T) {
	c := needGuest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := c.WatchLinkDead(ctx)
	if err != nil {
		t.Fatalf("WatchLinkDead: %v", err)
	}

	// Without a dead connection timeout, I/O fails as soon as the link is
	// dead.
	s := newMemServer(t, 1<<20, 0)
	index, ks := attach(t, c, s, Config{Index: 5}, 1)
	f := openDev(t, index)
	ks[0].cut()
	waitLinkDead(t, events, index, 10*time.Second)
	t0 := time.Now()
	if _, err := readAt(f, 4096, 4096); !errors.Is(err, unix.EIO) {
		t.Errorf("read on a dead link without a dead connection timeout: %v, want EIO", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("the read failed after %v, want at once", d)
	}
	if !connected(t, c, index) {
		t.Error("Status: the dead device is not connected (it still has its configuration)")
	}
	f.Close()
	if err := c.Disconnect(index); err != nil {
		t.Error(err)
	}

	// With one, I/O waits that long, then fails; a later Reconfigure still
	// revives the device.
	const dead = 2 * time.Second
	index, ks = attach(t, c, s, Config{Index: 6, DeadConnTimeout: dead}, 1)
	f = openDev(t, index)
	ks[0].cut()
	waitLinkDead(t, events, index, 10*time.Second)
	t0 = time.Now()
	_, err = readAt(f, 4096, 4096)
	d := time.Since(t0)
	if !errors.Is(err, unix.EIO) || d < dead-500*time.Millisecond || d > 5*dead {
		t.Errorf("read on a dead link: %v after %v, want EIO after about %v", err, d, dead)
	}
	t.Logf("dead connection timeout %v: the read failed after %v", dead, d.Round(time.Millisecond))
	t0 = time.Now()
	_, err = readAt(f, 8192, 4096)
	t.Logf("the next read: %v after %v", err, time.Since(t0).Round(time.Millisecond))
	k := s.connect(t)
	if err := c.Reconfigure(index, Reconfig{Sockets: []int{k.fd()}}); err != nil {
		t.Fatalf("Reconfigure after the dead connection timeout: %v", err)
	}
	k.f.Close()
	got, err := readAt(f, 12288, 4096)
	if err != nil || !bytes.Equal(got, s.snapshot(12288, 4096)) {
		t.Errorf("read after Reconfigure following the dead connection timeout: %v", err)
	}
}

func TestGuestClientFlags(t *testing.T) {
	c := needGuest(t)
	s := newMemServer(t, 1<<20, 0)

	// Index 12 is beyond nbds_max=8: CONNECT creates the device, and
	// DESTROY_ON_DISCONNECT removes it again.
	index, _ := attach(t, c, s, Config{Index: 12, ClientFlags: ClientFlagDestroyOnDisconnect}, 1)
	if _, err := os.Stat("/sys/block/nbd12"); err != nil || index != 12 {
		t.Fatalf("Connect(Index 12) = %d; sysfs: %v", index, err)
	}
	if err := c.Disconnect(index); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, 5*time.Second, "/sys/block/nbd12 removed", func() bool {
		_, err := os.Stat("/sys/block/nbd12")
		return errors.Is(err, os.ErrNotExist)
	})
	t.Logf("destroy on disconnect: /dev/nbd12 gone %v after Disconnect", d.Round(time.Millisecond))
	// The kernel removes the disk before it forgets the index.
	d = waitFor(t, 5*time.Second, "Status(12) empty", func() bool {
		st, err := c.Status(12)
		if err != nil {
			t.Fatalf("Status(12): %v", err)
		}
		return len(st) == 0
	})
	t.Logf("destroy on disconnect: Status forgot /dev/nbd12 %v after sysfs did", d.Round(time.Millisecond))

	// DISCONNECT_ON_CLOSE: the last close disconnects.
	index, ks := attach(t, c, s, Config{Index: 7, ClientFlags: ClientFlagDisconnectOnClose}, 1)
	f, err := os.Open(nbddev.Path(index))
	if err != nil {
		t.Fatal(err)
	}
	if !connected(t, c, index) {
		t.Fatal("not connected")
	}
	f.Close()
	waitFor(t, 5*time.Second, "disconnect on close", func() bool { return !connected(t, c, index) })
	waitFor(t, 5*time.Second, "NBD_CMD_DISC at the server", func() bool { return s.count(ks[0].id, nbdDisc) == 1 })
}
