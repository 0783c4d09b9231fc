package netlink

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

// littleEndian skips a test whose expected bytes are written out for a
// little-endian host: netlink integers are in host byte order.
func littleEndian(t *testing.T) {
	t.Helper()
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	if b[0] != 1 {
		t.Skip("expected bytes are written for a little-endian host")
	}
}

// unhex decodes hex with spaces and newlines for readability.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func u64p(v uint64) *uint64 { return &v }

func TestEncode(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name   string
		encode func() ([]byte, error)
		want   string
	}{
		{
			name: "connect, every field",
			encode: marshal(connectMessage(Config{
				Index: 3, Sockets: []int{5}, Size: 1 << 20, BlockSize: 512,
				ServerFlags: 0x10d, ClientFlags: ClientFlagDestroyOnDisconnect,
				Timeout: 30 * time.Second, DeadConnTimeout: 2 * time.Minute,
				BackendID: "exp",
			})),
			want: `01 01 0000` + // NBD_CMD_CONNECT, version 1
				`0800 0100 03000000` + // NBD_ATTR_INDEX u32 3
				`0c00 0200 0000100000000000` + // NBD_ATTR_SIZE_BYTES u64 1 MiB
				`0c00 0300 0002000000000000` + // NBD_ATTR_BLOCK_SIZE_BYTES u64 512
				`0c00 0400 1e00000000000000` + // NBD_ATTR_TIMEOUT u64 30
				`0c00 0800 7800000000000000` + // NBD_ATTR_DEAD_CONN_TIMEOUT u64 120
				`0c00 0500 0d01000000000000` + // NBD_ATTR_SERVER_FLAGS u64
				`0c00 0600 0100000000000000` + // NBD_ATTR_CLIENT_FLAGS u64
				`1000 0780` + // NBD_ATTR_SOCKETS, nested
				`0c00 0180` + // NBD_SOCK_ITEM, nested
				`0800 0100 05000000` + // NBD_SOCK_FD u32 5
				`0800 0a00 65787000`, // NBD_ATTR_BACKEND_IDENTIFIER "exp\0"
		},
		{
			name:   "connect, kernel picks the index",
			encode: marshal(connectMessage(Config{Index: -1, Sockets: []int{9}, Size: 4096})),
			want: `01 01 0000` +
				`0c00 0200 0010000000000000` +
				`0c00 0500 0000000000000000` +
				`0c00 0600 0000000000000000` +
				`1000 0780 0c00 0180 0800 0100 09000000`,
		},
		{
			name: "connect, two sockets, sub-second timeouts round up",
			encode: marshal(connectMessage(Config{
				Index: 0, Sockets: []int{7, 8}, Size: 512, ServerFlags: 1 << 8,
				Timeout: 1500 * time.Millisecond, DeadConnTimeout: time.Nanosecond,
			})),
			want: `01 01 0000` +
				`0800 0100 00000000` +
				`0c00 0200 0002000000000000` +
				`0c00 0400 0200000000000000` +
				`0c00 0800 0100000000000000` +
				`0c00 0500 0001000000000000` +
				`0c00 0600 0000000000000000` +
				`1c00 0780` +
				`0c00 0180 0800 0100 07000000` +
				`0c00 0180 0800 0100 08000000`,
		},
		{
			name: "reconfigure, every field",
			encode: marshal(reconfigureMessage(2, Reconfig{
				Sockets: []int{11}, Timeout: 10 * time.Second, DeadConnTimeout: time.Minute,
				ClientFlags: u64p(ClientFlagDisconnectOnClose), BackendID: "root",
			})),
			want: `03 01 0000` + // NBD_CMD_RECONFIGURE
				`0800 0100 02000000` +
				`0c00 0400 0a00000000000000` +
				`0c00 0800 3c00000000000000` +
				`0c00 0600 0200000000000000` +
				`1000 0780 0c00 0180 0800 0100 0b000000` +
				`0900 0a00 726f6f74 00000000`, // "root\0", padded to 4
		},
		{
			name:   "reconfigure, zero client flags are still sent",
			encode: marshal(reconfigureMessage(4, Reconfig{ClientFlags: u64p(0)})),
			want:   `03 01 0000 0800 0100 04000000 0c00 0600 0000000000000000`,
		},
		{
			name:   "reconfigure, nothing to change",
			encode: marshal(reconfigureMessage(4, Reconfig{})),
			want:   `03 01 0000 0800 0100 04000000`,
		},
		{
			name:   "disconnect",
			encode: marshal(disconnectMessage(15)),
			want:   `02 01 0000 0800 0100 0f000000`,
		},
		{
			name:   "status of all devices",
			encode: marshal(statusMessage(-1)),
			want:   `05 01 0000`,
		},
		{
			name:   "status of one device",
			encode: marshal(statusMessage(1)),
			want:   `05 01 0000 0800 0100 01000000`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if want := unhex(t, tt.want); !bytes.Equal(got, want) {
				t.Fatalf("encoded\n got %x\nwant %x", got, want)
			}
		})
	}
}

// marshal adapts an encoder's result for the table.
func marshal(m interface{ MarshalBinary() ([]byte, error) }, err error) func() ([]byte, error) {
	return func() ([]byte, error) {
		if err != nil {
			return nil, err
		}
		return m.MarshalBinary()
	}
}

func TestEncodeRefuses(t *testing.T) {
	ok := Config{Index: -1, Sockets: []int{3}, Size: 1 << 20, BlockSize: 512}
	with := func(f func(*Config)) Config { c := ok; f(&c); return c }
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"no sockets", err2(connectMessage(with(func(c *Config) { c.Sockets = nil }))), "no sockets"},
		{"two sockets without multi-conn", err2(connectMessage(with(func(c *Config) { c.Sockets = []int{3, 4} }))), "NBD_FLAG_CAN_MULTI_CONN"},
		{"negative socket", err2(connectMessage(with(func(c *Config) { c.Sockets = []int{-1} }))), "socket descriptor -1"},
		{"zero size", err2(connectMessage(with(func(c *Config) { c.Size = 0 }))), "size 0"},
		{"odd block size", err2(connectMessage(with(func(c *Config) { c.BlockSize = 1000 }))), "block size 1000"},
		{"tiny block size", err2(connectMessage(with(func(c *Config) { c.BlockSize = 256 }))), "block size 256"},
		{"index -2", err2(connectMessage(with(func(c *Config) { c.Index = -2 }))), "index -2"},
		{"negative timeout", err2(connectMessage(with(func(c *Config) { c.Timeout = -time.Second }))), "timeout -1s is negative"},
		{"negative dead conn timeout", err2(connectMessage(with(func(c *Config) { c.DeadConnTimeout = -time.Second }))), "dead connection timeout"},
		{"reconfigure index -1", err2(reconfigureMessage(-1, Reconfig{})), "index -1"},
		{"reconfigure bad socket", err2(reconfigureMessage(0, Reconfig{Sockets: []int{-5}})), "socket descriptor -5"},
		{"disconnect index -1", err2(disconnectMessage(-1)), "index -1"},
		{"status index -3", err2(statusMessage(-3)), "index -3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", tt.err, tt.want)
			}
		})
	}
}

func err2[T any](_ T, err error) error { return err }

func TestDecodeStatus(t *testing.T) {
	littleEndian(t)
	tests := []struct {
		name string
		data string // attributes after the generic netlink header
		want []DeviceStatus
		err  string
	}{
		{
			// As the kernel builds it: nla_nest_start_noflag, so no
			// NLA_F_NESTED; the u8 padded to 4 bytes.
			name: "two devices",
			data: `2c00 0900` +
				`1400 0100 0800 0100 00000000 0500 0200 01000000` +
				`1400 0100 0800 0100 07000000 0500 0200 00000000`,
			want: []DeviceStatus{{Index: 0, Connected: true}, {Index: 7, Connected: false}},
		},
		{
			name: "nested flags set, unknown attributes skipped",
			data: `0800 0100 03000000` + // a stray NBD_ATTR_INDEX
				`2000 0980` +
				`1c00 0180 0800 0100 03000000 0500 0200 01000000 0800 0900 ffffffff`,
			want: []DeviceStatus{{Index: 3, Connected: true}},
		},
		{
			name: "empty list (no such device)",
			data: `0400 0900`,
			want: nil,
		},
		{
			name: "item without index",
			data: `1000 0900 0c00 0100 0500 0200 01000000`,
			err:  "without NBD_DEVICE_INDEX",
		},
		{
			name: "truncated",
			data: `2c00 0900 1400 0100 0800`,
			err:  "invalid",
		},
		{
			name: "connected is not a u8",
			data: `1800 0900 1400 0100 0800 0100 01000000 0600 0200 0100 0000`,
			err:  "not a uint8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeStatus(unhex(t, tt.data))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("decodeStatus = %v, %v; want error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeStatus: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("decodeStatus = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("decodeStatus = %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

func TestDecodeIndex(t *testing.T) {
	littleEndian(t)
	for _, tt := range []struct {
		data string
		want int
		err  string
	}{
		{data: `0800 0100 2a000000`, want: 42},
		{data: `0c00 0200 0000100000000000 0800 0100 01000000`, want: 1},
		{data: ``, err: "no NBD_ATTR_INDEX"},
		{data: `0600 0100 2a00 0000`, err: "not a uint32"},
	} {
		got, err := decodeIndex(unhex(t, tt.data))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("decodeIndex(%s) = %d, %v; want error containing %q", tt.data, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("decodeIndex(%s) = %d, %v; want %d", tt.data, got, err, tt.want)
		}
	}
}
