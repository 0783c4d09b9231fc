package boot

import (
	"os"
	"testing"
)

func TestAliveNotSelfOrGone(t *testing.T) {
	if alive(os.Getpid()) {
		t.Error("alive(test process) = true; it is not a keeper")
	}
	if alive(0) || alive(-1) || alive(1<<30) {
		t.Error("alive of an impossible pid = true")
	}
}
