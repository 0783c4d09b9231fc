package netlink

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/nbdroot/nbdroot/nbddev"
)

// Names and version from the kernel's include/uapi/linux/nbd-netlink.h.
const (
	familyName = "nbd"          // NBD_GENL_FAMILY_NAME
	groupName  = "nbd_mc_group" // NBD_GENL_MCAST_GROUP_NAME
	version    = 1              // NBD_GENL_VERSION
)

// Commands (enum NBD_CMD_*).
const (
	cmdConnect     = 1 // NBD_CMD_CONNECT
	cmdDisconnect  = 2 // NBD_CMD_DISCONNECT
	cmdReconfigure = 3 // NBD_CMD_RECONFIGURE
	cmdLinkDead    = 4 // NBD_CMD_LINK_DEAD
	cmdStatus      = 5 // NBD_CMD_STATUS
)

// Top-level attributes (enum NBD_ATTR_*). The kernel's nla_policy types are
// in the comments: integers are sent with exactly that width.
const (
	attrIndex           = 1  // NBD_ATTR_INDEX, NLA_U32
	attrSizeBytes       = 2  // NBD_ATTR_SIZE_BYTES, NLA_U64
	attrBlockSizeBytes  = 3  // NBD_ATTR_BLOCK_SIZE_BYTES, NLA_U64
	attrTimeout         = 4  // NBD_ATTR_TIMEOUT, NLA_U64 (seconds)
	attrServerFlags     = 5  // NBD_ATTR_SERVER_FLAGS, NLA_U64
	attrClientFlags     = 6  // NBD_ATTR_CLIENT_FLAGS, NLA_U64
	attrSockets         = 7  // NBD_ATTR_SOCKETS, NLA_NESTED
	attrDeadConnTimeout = 8  // NBD_ATTR_DEAD_CONN_TIMEOUT, NLA_U64 (seconds)
	attrDeviceList      = 9  // NBD_ATTR_DEVICE_LIST, NLA_NESTED (replies)
	attrBackendID       = 10 // NBD_ATTR_BACKEND_IDENTIFIER, NLA_STRING (Linux 5.14+)
)

// Nested attributes: NBD_ATTR_SOCKETS holds NBD_SOCK_ITEMs, each holding one
// NBD_SOCK_FD; NBD_ATTR_DEVICE_LIST holds NBD_DEVICE_ITEMs, each holding
// NBD_DEVICE_INDEX and NBD_DEVICE_CONNECTED.
const (
	sockItem        = 1 // NBD_SOCK_ITEM
	sockFD          = 1 // NBD_SOCK_FD, NLA_U32
	deviceItem      = 1 // NBD_DEVICE_ITEM
	deviceIndex     = 1 // NBD_DEVICE_INDEX, NLA_U32
	deviceConnected = 2 // NBD_DEVICE_CONNECTED, NLA_U8
)

// Client flags for Config.ClientFlags and Reconfig.ClientFlags
// (NBD_CFLAG_* in include/uapi/linux/nbd.h).
const (
	// ClientFlagDestroyOnDisconnect makes the kernel delete /dev/nbdN when
	// it is disconnected.
	ClientFlagDestroyOnDisconnect uint64 = 1 << 0
	// ClientFlagDisconnectOnClose makes the kernel disconnect the device
	// when its last opener closes it.
	ClientFlagDisconnectOnClose uint64 = 1 << 1
)

// serverFlagCanMultiConn is NBD_FLAG_CAN_MULTI_CONN: without it in the
// transmission flags the kernel refuses a second socket with EINVAL.
const serverFlagCanMultiConn = 1 << 8

// maxIndex bounds Config.Index: the kernel takes it as a u32 and rejects
// anything beyond its minor-number space anyway.
const maxIndex = math.MaxInt32

// request builds a generic netlink message for cmd from attrs.
func request(cmd uint8, ae *netlink.AttributeEncoder) (genetlink.Message, error) {
	b, err := ae.Encode()
	if err != nil {
		return genetlink.Message{}, err
	}
	return genetlink.Message{Header: genetlink.Header{Command: cmd, Version: version}, Data: b}, nil
}

// encodeSockets adds NBD_ATTR_SOCKETS with one NBD_SOCK_ITEM per fd.
func encodeSockets(ae *netlink.AttributeEncoder, fds []int) error {
	for _, fd := range fds {
		if fd < 0 || fd > math.MaxInt32 {
			return fmt.Errorf("socket descriptor %d is not valid", fd)
		}
	}
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(sockItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
	return nil
}

// encodeTimeouts adds NBD_ATTR_TIMEOUT and NBD_ATTR_DEAD_CONN_TIMEOUT when
// they are set, in the whole seconds the kernel takes, rounded up so that a
// positive timeout never becomes 0 ("none").
func encodeTimeouts(ae *netlink.AttributeEncoder, timeout, deadConn time.Duration) error {
	timeouts := []struct {
		attr uint16
		name string
		d    time.Duration
	}{{attrTimeout, "timeout", timeout}, {attrDeadConnTimeout, "dead connection timeout", deadConn}}
	for _, t := range timeouts {
		if t.d < 0 {
			return fmt.Errorf("%s %v is negative", t.name, t.d)
		}
		if t.d > 0 {
			ae.Uint64(t.attr, uint64((t.d+time.Second-1)/time.Second))
		}
	}
	return nil
}

// connectMessage encodes NBD_CMD_CONNECT for cfg. It checks what the kernel
// would reject with a bare EINVAL, so that the caller learns which field is
// wrong.
func connectMessage(cfg Config) (genetlink.Message, error) {
	if cfg.Index < -1 || cfg.Index > maxIndex {
		return genetlink.Message{}, fmt.Errorf("device index %d is not valid (-1 picks a free device)", cfg.Index)
	}
	if len(cfg.Sockets) == 0 {
		return genetlink.Message{}, errors.New("no sockets")
	}
	if len(cfg.Sockets) > 1 && cfg.ServerFlags&serverFlagCanMultiConn == 0 {
		return genetlink.Message{}, fmt.Errorf("%d sockets, but the server flags %#x lack NBD_FLAG_CAN_MULTI_CONN", len(cfg.Sockets), cfg.ServerFlags)
	}
	if cfg.Size == 0 || cfg.Size > math.MaxInt64 {
		return genetlink.Message{}, fmt.Errorf("size %d is not valid", cfg.Size)
	}
	ae := netlink.NewAttributeEncoder()
	if cfg.Index >= 0 {
		ae.Uint32(attrIndex, uint32(cfg.Index))
	}
	ae.Uint64(attrSizeBytes, cfg.Size)
	if cfg.BlockSize != 0 {
		if err := nbddev.CheckBlockSize(int64(min(cfg.BlockSize, 1<<62))); err != nil {
			return genetlink.Message{}, fmt.Errorf("block size %w", err)
		}
		ae.Uint64(attrBlockSizeBytes, cfg.BlockSize)
	}
	if err := encodeTimeouts(ae, cfg.Timeout, cfg.DeadConnTimeout); err != nil {
		return genetlink.Message{}, err
	}
	ae.Uint64(attrServerFlags, cfg.ServerFlags)
	ae.Uint64(attrClientFlags, cfg.ClientFlags)
	if err := encodeSockets(ae, cfg.Sockets); err != nil {
		return genetlink.Message{}, err
	}
	if cfg.BackendID != "" {
		ae.String(attrBackendID, cfg.BackendID)
	}
	return request(cmdConnect, ae)
}

// reconfigureMessage encodes NBD_CMD_RECONFIGURE for /dev/nbd<index>.
func reconfigureMessage(index int, r Reconfig) (genetlink.Message, error) {
	if err := validIndex(index); err != nil {
		return genetlink.Message{}, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if err := encodeTimeouts(ae, r.Timeout, r.DeadConnTimeout); err != nil {
		return genetlink.Message{}, err
	}
	if r.ClientFlags != nil {
		ae.Uint64(attrClientFlags, *r.ClientFlags)
	}
	if len(r.Sockets) > 0 {
		if err := encodeSockets(ae, r.Sockets); err != nil {
			return genetlink.Message{}, err
		}
	}
	if r.BackendID != "" {
		ae.String(attrBackendID, r.BackendID)
	}
	return request(cmdReconfigure, ae)
}

// disconnectMessage encodes NBD_CMD_DISCONNECT for /dev/nbd<index>.
func disconnectMessage(index int) (genetlink.Message, error) {
	if err := validIndex(index); err != nil {
		return genetlink.Message{}, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	return request(cmdDisconnect, ae)
}

func validIndex(index int) error {
	if index < 0 || index > maxIndex {
		return fmt.Errorf("device index %d is not valid", index)
	}
	return nil
}

// decodeIndex reads NBD_ATTR_INDEX from the attributes of a CONNECT reply or
// a LINK_DEAD event.
func decodeIndex(b []byte) (int, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, err
	}
	index := -1
	for ad.Next() {
		if ad.Type() == attrIndex {
			index = int(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return 0, err
	}
	if index < 0 {
		return 0, errors.New("no NBD_ATTR_INDEX in the message")
	}
	return index, nil
}
