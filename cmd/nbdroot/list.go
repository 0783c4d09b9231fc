package main

import (
	"context"
	"errors"
)

// runList is being written; this placeholder is replaced in the same session.
func runList(ctx context.Context, sio stdio, args []string) error {
	return errors.New("list: not implemented yet")
}
