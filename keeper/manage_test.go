package keeper

import (
	"os"
	"testing"
)

func TestAliveNotSelfOrGone(t *testing.T) {
	if Alive(os.Getpid()) {
		t.Error("Alive(test process) = true; it is not a keeper")
	}
	if Alive(0) || Alive(-1) || Alive(1<<30) {
		t.Error("alive of an impossible pid = true")
	}
}
