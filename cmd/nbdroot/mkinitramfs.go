package main

import (
	"context"
	"errors"
)

// runMkinitramfs is being written; this placeholder is replaced in the same session.
func runMkinitramfs(ctx context.Context, sio stdio, args []string) error {
	return errors.New("mkinitramfs: not implemented yet")
}
