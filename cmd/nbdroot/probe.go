package main

import (
	"context"
	"errors"
)

// runProbe is being written; this placeholder is replaced in the same session.
func runProbe(ctx context.Context, sio stdio, args []string) error {
	return errors.New("probe: not implemented yet")
}
