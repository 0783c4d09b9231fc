package main

import (
	"context"
	"errors"
)

// runConfig is being written; this placeholder is replaced in the same session.
func runConfig(ctx context.Context, sio stdio, args []string) error {
	return errors.New("config: not implemented yet")
}
