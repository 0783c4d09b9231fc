package main

import (
	"context"
	"errors"
)

func runBoot(ctx context.Context, sio stdio, args []string) error { return errors.New("boot: not implemented yet") }

func isKeeper(argv []string) bool { return false }

func runKeeper(argv []string) error { return errors.New("keeper: not implemented yet") }

func runPID1(sio stdio) {}
