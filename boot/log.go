package boot

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Logger writes one line per event to the console and to /dev/kmsg, so that
// `dmesg | grep nbdroot` tells the story of the boot after the fact:
//
//	nbdroot: network: eth0 10.0.2.15/24 from DHCP server 10.0.2.2 (+0.09s)
type Logger struct {
	start   time.Time
	console io.Writer
	mu      sync.Mutex
	kmsg    io.WriteCloser // nil until /dev is mounted
	debug   bool
	quiet   bool // errors only on the console
}

// NewLogger returns a Logger writing to console, measuring elapsed time from
// start.
func NewLogger(console io.Writer, start time.Time) *Logger {
	return &Logger{start: start, console: console}
}

// OpenKmsg starts copying log lines to /dev/kmsg. A missing /dev/kmsg is not
// an error: the console still gets everything.
func (l *Logger) OpenKmsg() {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	l.mu.Lock()
	l.kmsg = f
	l.mu.Unlock()
}

// SetQuiet keeps all but errors off the console (an interactive command
// such as attach); /dev/kmsg still gets every line.
func (l *Logger) SetQuiet(on bool) { l.quiet = on }

// SetDebug enables Debugf output.
func (l *Logger) SetDebug(on bool) { l.debug = on }

// Elapsed returns the time since the logger's start.
func (l *Logger) Elapsed() time.Duration { return time.Since(l.start) }

// Start returns the logger's reference time.
func (l *Logger) Start() time.Time { return l.start }

// Printf logs one line for step (an empty step logs the bare message).
func (l *Logger) Printf(step, format string, a ...any) {
	l.emit(6, step, fmt.Sprintf(format, a...))
}

// Errorf logs one line for step at error level.
func (l *Logger) Errorf(step, format string, a ...any) {
	l.emit(3, step, fmt.Sprintf(format, a...))
}

// Debugf logs one line for step when debug logging is on.
func (l *Logger) Debugf(step, format string, a ...any) {
	if l.debug {
		l.emit(7, step, fmt.Sprintf(format, a...))
	}
}

func (l *Logger) emit(level int, step, msg string) {
	msg = strings.TrimRight(msg, "\n")
	if step != "" {
		msg = step + ": " + msg
	}
	line := fmt.Sprintf("nbdroot: %s (+%.2fs)", msg, l.Elapsed().Seconds())
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.quiet || level <= 3 {
		fmt.Fprintln(l.console, line)
	}
	if l.kmsg != nil {
		// One write is one kmsg record; "<N>" sets its level. The kernel
		// caps a record at about 1 KiB.
		rec := fmt.Sprintf("<%d>%s", level, line)
		if len(rec) > 1000 {
			rec = rec[:1000]
		}
		_, _ = io.WriteString(l.kmsg, rec)
	}
}

// DebugWriter returns an io.Writer whose lines become Debugf lines of step:
// for libraries that log through the standard log package (u-root's DHCP
// client prints whole packets).
func (l *Logger) DebugWriter(step string) io.Writer {
	return debugWriter{l, step}
}

type debugWriter struct {
	l    *Logger
	step string
}

func (w debugWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.l.Debugf(w.step, "%s", line)
	}
	return len(p), nil
}
