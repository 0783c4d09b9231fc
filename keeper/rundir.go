package keeper

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/nbddev"
)

// DefaultRunDir is nbdroot's directory on /run, which follows PID 1 into
// the real root: the keepers' files, and the boot's retry request and
// overlay layers.
const DefaultRunDir = "/run/nbdroot"

// RunDir is the run-directory protocol between a keeper and the commands
// that manage it. For /dev/nbdN it holds
//
//	nbdN.json  the keeper's State, replaced atomically on every change
//	nbdN.pid   the keeper's pid, written when it starts
//	nbdN.stop  made by Detach before it disconnects, so that the keeper
//	           takes the disconnect for a request, not a lost connection
//
// The zero value is DefaultRunDir.
type RunDir struct {
	// Path is the directory; empty means DefaultRunDir.
	Path string
}

// State is what a keeper publishes about its device, for `nbdroot status`
// and `nbdroot detach`. The JSON names are a stable interface.
type State struct {
	Device      string           `json:"device"`
	Index       int              `json:"index"`
	Server      string           `json:"server"`
	Export      string           `json:"export"`
	Size        uint64           `json:"size"`
	BlockSize   uint32           `json:"block_size"`
	Interface   config.Interface `json:"interface"`
	Connections int              `json:"connections"`
	TLS         bool             `json:"tls"`
	Pid         int              `json:"keeper_pid"`
	Reconnects  int              `json:"reconnects"`
	Since       time.Time        `json:"since"`
}

func (r RunDir) dir() string {
	if r.Path == "" {
		return DefaultRunDir
	}
	return r.Path
}

// file is nbdN.ext in the directory.
func (r RunDir) file(index int, ext string) string {
	return filepath.Join(r.dir(), nbddev.Name(index)+"."+ext)
}

// Claim is a starting keeper's entry for /dev/nbdN: its pid, and no stale
// stop request.
func (r RunDir) Claim(index, pid int) {
	if err := os.MkdirAll(r.dir(), 0o755); err == nil {
		_ = os.WriteFile(r.file(index, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644)
	}
	_ = os.Remove(r.file(index, "stop"))
}

// Release removes every file of /dev/nbdN: its keeper is gone.
func (r RunDir) Release(index int) {
	for _, ext := range []string{"json", "pid", "stop"} {
		_ = os.Remove(r.file(index, ext))
	}
}

// Publish replaces the state file of st.Index atomically.
func (r RunDir) Publish(st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := r.file(st.Index, "json")
	if err := os.WriteFile(path+".tmp", append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// State reads the state a keeper published for /dev/nbdN.
func (r RunDir) State(index int) (State, error) {
	var st State
	path := r.file(index, "json")
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// RequestStop tells the keeper of /dev/nbdN that the disconnect about to
// come is wanted.
func (r RunDir) RequestStop(index int) error {
	if err := os.MkdirAll(r.dir(), 0o755); err != nil {
		return err
	}
	return os.WriteFile(r.file(index, "stop"), nil, 0o644)
}

// StopRequested reports whether RequestStop was called for /dev/nbdN.
func (r RunDir) StopRequested(index int) bool {
	_, err := os.Stat(r.file(index, "stop"))
	return err == nil
}

// CancelStop withdraws a stop request that no keeper will see.
func (r RunDir) CancelStop(index int) { _ = os.Remove(r.file(index, "stop")) }

// Alive reports whether pid is a running keeper: not a zombie waiting for
// its parent (an exited keeper whose parent is an init that does not reap),
// and not another process that reused the pid.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil || !strings.HasPrefix(string(cmdline), Name+"\x00") {
		return false
	}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}
