package main

import (
	"context"
	"time"

	"github.com/nbdroot/nbdroot/bootlog"
	"github.com/nbdroot/nbdroot/keeper"
	"github.com/nbdroot/nbdroot/nbddev"
	"github.com/nbdroot/nbdroot/shutdown"
)

// shutdownTimeout bounds the exitrd's work: a server gone for good must not
// keep the machine from powering off.
const shutdownTimeout = 30 * time.Second

// runShutdown is /shutdown in the exitrd (package shutdown): systemd-shutdown
// executes it as PID 1 with the verb as argv[1]. It detaches the old root and
// its NBD devices, then reboots, powers off, halts or kexecs. It never
// returns: PID 1 must not exit.
func runShutdown(sio stdio, argv []string) {
	log := bootlog.New(sio.err, time.Now())
	log.OpenKmsg()
	verb := shutdown.VerbPoweroff
	if len(argv) > 1 {
		if v, err := shutdown.ParseVerb(argv[1]); err != nil {
			log.Errorf("shutdown", "%v; powering off", err)
		} else {
			verb = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	err := shutdown.Run(ctx, shutdown.Options{
		OldRoot:   "/oldroot",
		Mountinfo: "/proc/self/mountinfo",
		Devices:   nbddev.Sysfs{}.Attached,
		Detach:    func(ctx context.Context, i int) error { return keeper.Detach(ctx, i, true) },
		Log:       log,
	})
	cancel()
	if err != nil {
		log.Errorf("shutdown", "%v", err)
	}
	log.Printf("shutdown", "%s", verb)
	err = shutdown.Reboot(verb)
	log.Errorf("shutdown", "%v", err)
	for {
		time.Sleep(time.Hour)
	}
}
