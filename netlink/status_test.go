// NBD_CMD_STATUS, which only the tests send: they read the kernel's view of
// the devices with it. The product reads sysfs (nbddev).

package netlink

import (
	"errors"
	"fmt"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// DeviceStatus is one device in a Status answer.
type DeviceStatus struct {
	// Index is N of /dev/nbdN.
	Index int
	// Connected is the kernel's view: the device has a configuration,
	// which it has while connected and also while anyone holds it open.
	Connected bool
}

// Status lists /dev/nbd<index>, or every device when index is -1, in the
// kernel's order. A device that does not exist is simply absent.
func (c *Client) Status(index int) ([]DeviceStatus, error) {
	m, err := statusMessage(index)
	replies, err := c.command(cmdStatus, index, m, err)
	if err != nil {
		return nil, err
	}
	var list []DeviceStatus
	for _, r := range replies {
		l, err := decodeStatus(r.Data)
		if err != nil {
			return nil, fmt.Errorf("netlink: NBD_CMD_STATUS: reply: %w", err)
		}
		list = append(list, l...)
	}
	return list, nil
}

// statusMessage encodes NBD_CMD_STATUS for /dev/nbd<index>, or for every
// device when index is -1.
func statusMessage(index int) (genetlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	if index != -1 {
		if err := validIndex(index); err != nil {
			return genetlink.Message{}, err
		}
		ae.Uint32(attrIndex, uint32(index))
	}
	return request(cmdStatus, ae)
}

// decodeStatus reads the NBD_ATTR_DEVICE_LIST of a STATUS reply.
func decodeStatus(b []byte) ([]DeviceStatus, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var list []DeviceStatus
	for ad.Next() {
		if ad.Type() != attrDeviceList {
			continue
		}
		ad.Nested(func(items *netlink.AttributeDecoder) error {
			for items.Next() {
				if items.Type() != deviceItem {
					continue
				}
				items.Nested(func(item *netlink.AttributeDecoder) error {
					d := DeviceStatus{Index: -1}
					for item.Next() {
						switch item.Type() {
						case deviceIndex:
							d.Index = int(item.Uint32())
						case deviceConnected:
							d.Connected = item.Uint8() != 0
						}
					}
					if err := item.Err(); err != nil {
						return err
					}
					if d.Index < 0 {
						return errors.New("device item without NBD_DEVICE_INDEX")
					}
					list = append(list, d)
					return nil
				})
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	return list, nil
}
