package keeper

import (
	"strings"
	"testing"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/negotiate"
)

func TestKernelParams(t *testing.T) {
	exp := func(size uint64, min uint32) *negotiate.Export {
		return &negotiate.Export{Size: size, MinBlock: min, Flags: negotiate.FlagHasFlags | negotiate.FlagSendFlush}
	}
	for _, tc := range []struct {
		name      string
		dev       config.Device
		exp       *negotiate.Export
		size      uint64
		bs        uint32
		readOnly  bool
		wantError string
	}{
		{name: "defaults: 512-byte blocks", exp: exp(1<<20, 0), size: 1 << 20, bs: 512},
		{name: "server minimum above 512", exp: exp(1<<20, 4096), size: 1 << 20, bs: 4096},
		{name: "size rounded down to a block", exp: exp(1<<20+100, 0), size: 1 << 20, bs: 512},
		{name: "explicit block size", dev: config.Device{BlockSize: 2048}, exp: exp(1<<20, 0), size: 1 << 20, bs: 2048},
		{name: "read-only sets the flag", dev: config.Device{ReadOnly: true}, exp: exp(1<<20, 0), size: 1 << 20, bs: 512, readOnly: true},
		{name: "below the server minimum", dev: config.Device{BlockSize: 512}, exp: exp(1<<20, 4096), wantError: "below the server's minimum 4096"},
		{name: "smaller than a block", exp: exp(100, 0), wantError: "smaller than one 512-byte block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := kernelParams(tc.dev, tc.exp)
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("err = %v, want %q", err, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ro := negotiate.Flags(p.Flags).Has(negotiate.FlagReadOnly)
			if p.Size != tc.size || p.BlockSize != tc.bs || ro != tc.readOnly || p.ReadOnly != tc.readOnly ||
				!negotiate.Flags(p.Flags).Has(negotiate.FlagSendFlush) {
				t.Fatalf("got size %d bs %d flags %s ReadOnly %v; want size %d bs %d read-only %v",
					p.Size, p.BlockSize, negotiate.Flags(p.Flags), p.ReadOnly, tc.size, tc.bs, tc.readOnly)
			}
		})
	}
}
