package keeper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/nbdroot/nbdroot/config"
)

// TestRunDir walks one device through the protocol a keeper and detach
// speak: claim, publish, stop request, release.
func TestRunDir(t *testing.T) {
	r := RunDir{Path: filepath.Join(t.TempDir(), "run")}
	if err := r.RequestStop(3); err != nil { // a stale request from a dead keeper
		t.Fatal(err)
	}
	r.Claim(3, 4242)
	if b, err := os.ReadFile(filepath.Join(r.Path, "nbd3.pid")); err != nil || string(b) != "4242\n" {
		t.Errorf("pid file = %q, %v; want 4242", b, err)
	}
	if r.StopRequested(3) {
		t.Error("Claim left the stale stop request")
	}
	if _, err := r.State(3); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("State before Publish: err = %v, want not-exist", err)
	}
	st := State{Device: "/dev/nbd3", Index: 3, Server: "10.0.2.2:10809", Export: "root", Size: 1 << 20, BlockSize: 512,
		Interface: config.InterfaceNetlink, Connections: 2, TLS: true, Pid: 4242, Since: time.Unix(1700000000, 0).UTC()}
	if err := r.Publish(st); err != nil {
		t.Fatal(err)
	}
	st.Reconnects = 1
	if err := r.Publish(st); err != nil {
		t.Fatal(err)
	}
	if got, err := r.State(3); err != nil || !reflect.DeepEqual(got, st) {
		t.Errorf("State = %+v, %v; want %+v", got, err, st)
	}
	if err := r.RequestStop(3); err != nil || !r.StopRequested(3) || r.StopRequested(4) {
		t.Errorf("RequestStop: %v; StopRequested(3) %v, (4) %v", err, r.StopRequested(3), r.StopRequested(4))
	}
	r.Release(3)
	if ents, _ := os.ReadDir(r.Path); len(ents) != 0 {
		t.Errorf("after Release the directory holds %d files, want none", len(ents))
	}
	if err := os.WriteFile(filepath.Join(r.Path, "nbd5.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.State(5); err == nil {
		t.Error("State of a torn file: no error")
	}
}

// TestRunDuties: the first duty to return ends the others' context, and its
// error is the result.
func TestRunDuties(t *testing.T) {
	boom := errors.New("boom")
	var stoppedByCtx bool
	err := runDuties(context.Background(),
		func(ctx context.Context) error { <-ctx.Done(); stoppedByCtx = true; return nil },
		nil,
		func(ctx context.Context) error { return boom },
	)
	if err != boom || !stoppedByCtx {
		t.Errorf("runDuties = %v (other duty stopped: %v), want boom and the other stopped", err, stoppedByCtx)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := runDuties(ctx, func(ctx context.Context) error { <-ctx.Done(); return nil }); err != nil {
		t.Errorf("runDuties after ctx ended = %v, want nil", err)
	}
}

func TestAliveNotSelfOrGone(t *testing.T) {
	if Alive(os.Getpid()) {
		t.Error("Alive(test process) = true; it is not a keeper")
	}
	if Alive(0) || Alive(-1) || Alive(1<<30) {
		t.Error("alive of an impossible pid = true")
	}
}
