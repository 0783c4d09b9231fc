package main

import (
	"os"
	"slices"
	"strings"
	"time"
)

// clients is the lab's many-clients scenario (testinit.mode=clients): the
// guests share one read-only export, each with a tmpfs overlay. It writes
// /nbdroot-test/client-TOKEN into this guest's overlay, waits
// testinit.settle seconds (default 20) so that the other guests have
// written theirs, and lists every client-* file it sees:
//
//	TESTINIT: client wrote=ok|ERRNO t=UPTIME
//	TESTINIT: client sees=TOKEN[,TOKEN...] t=UPTIME
//
// A guest whose overlay is its own sees its token alone.
func clients(args map[string]string) {
	tok := args["testinit.token"]
	err := writeSynced("/nbdroot-test/client-"+tok, tok)
	say("client wrote=%s t=%.3f", errName(err), uptime())
	time.Sleep(time.Duration(intArg(args, "testinit.settle", 20)) * time.Second)
	ents, err := os.ReadDir("/nbdroot-test")
	if err != nil {
		say("client sees=FAIL(%v) t=%.3f", err, uptime())
		return
	}
	var seen []string
	for _, e := range ents {
		if name, ok := strings.CutPrefix(e.Name(), "client-"); ok {
			seen = append(seen, name)
		}
	}
	slices.Sort(seen)
	say("client sees=%s t=%.3f", strings.Join(seen, ","), uptime())
}
