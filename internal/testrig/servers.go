package testrig

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ReadyTimeout bounds the wait for a server to accept connections.
const ReadyTimeout = 15 * time.Second

// Server is a running NBD server on 127.0.0.1, or on a Lab's server
// address inside the lab's network namespace.
type Server struct {
	// Kind is "qemu-nbd", "nbdkit" or "nbd-server".
	Kind string
	// Host is the address it listens on: "127.0.0.1" or the lab's.
	Host string
	// Addr is "HOST:PORT".
	Addr string
	// Port is the TCP port.
	Port int

	// dial connects to the server, in the lab's namespace for a lab server.
	dial func(addr string, timeout time.Duration) (net.Conn, error)

	t    testing.TB
	argv []string
	proc *Process // qemu-nbd, nbdkit: the server itself

	// nbd-server forks into the background: it is stopped by the pid it
	// writes to pidFile, and says nothing once detached.
	pidFile string
	pid     int
}

// Option adjusts a server started by QemuNBD or NbdServer.
type Option func(*options)

type options struct {
	format     string
	tlsDir     string
	verifyPeer bool
	shared     int
	readOnly   bool
	extra      []string
	lab        *Lab
}

// TLS makes the server require TLS with the certificates in dir (a CertSet's
// Dir). Client certificates are not checked unless VerifyPeer is given too.
func TLS(dir string) Option { return func(o *options) { o.tlsDir = dir } }

// VerifyPeer makes a TLS server require a client certificate signed by its CA.
func VerifyPeer() Option { return func(o *options) { o.verifyPeer = true } }

// Shared lets qemu-nbd serve n clients at once (--shared; default 1).
// nbd-server ignores it.
func Shared(n int) Option { return func(o *options) { o.shared = n } }

// InLab runs the server inside l's network namespace, listening on the lab's
// server address.
func InLab(l *Lab) Option { return func(o *options) { o.lab = l } }

// endpoint is where a server of o listens, how it is started and reached.
type endpoint struct {
	host   string
	port   int
	prefix []string // the command prefix that runs it there
	dial   func(addr string, timeout time.Duration) (net.Conn, error)
}

func (o options) endpoint(t testing.TB) endpoint {
	if o.lab != nil {
		return endpoint{host: o.lab.ServerAddr().String(), port: o.lab.nextPort(), prefix: o.lab.Exec(), dial: o.lab.Dial}
	}
	return endpoint{host: "127.0.0.1", port: FreePort(t), dial: Dial}
}

// Format makes qemu-nbd open the image as format ("qcow2"; the default is
// "raw"). nbd-server ignores it.
func Format(format string) Option { return func(o *options) { o.format = format } }

// ReadOnly serves the export read-only.
func ReadOnly() Option { return func(o *options) { o.readOnly = true } }

// Args appends raw arguments to qemu-nbd's command line, or raw lines to
// nbd-server's [generic] section.
func Args(a ...string) Option { return func(o *options) { o.extra = append(o.extra, a...) } }

// QemuNBD serves image (raw, or as Format says) as export on a free port
// with qemu-nbd --persistent. Give Shared(n) for more than one simultaneous
// client.
func QemuNBD(t testing.TB, image, export string, opts ...Option) *Server {
	t.Helper()
	Need(t, "qemu-nbd")
	o := collect(opts)
	ep := o.endpoint(t)
	format := o.format
	if format == "" {
		format = "raw"
	}
	argv := append(ep.prefix, "qemu-nbd", "-x", export, "-b", ep.host, "-p", strconv.Itoa(ep.port),
		"-f", format, "--persistent")
	if o.shared > 0 {
		argv = append(argv, "--shared="+strconv.Itoa(o.shared))
	}
	if o.readOnly {
		argv = append(argv, "--read-only")
	}
	if o.tlsDir != "" {
		verify := "off"
		if o.verifyPeer {
			verify = "on"
		}
		argv = append(argv,
			"--object", "tls-creds-x509,id=tls0,dir="+o.tlsDir+",endpoint=server,verify-peer="+verify,
			"--tls-creds", "tls0")
	}
	argv = append(argv, o.extra...)
	argv = append(argv, image)
	return startForeground(t, "qemu-nbd", ep, argv)
}

// Nbdkit runs nbdkit in the foreground on a free port with args after the
// address and port: options, then the plugin and its parameters, e.g.
// "memory", "64M" or "--tls=require", "--tls-certificates=DIR", "memory", "1M".
func Nbdkit(t testing.TB, args ...string) *Server {
	t.Helper()
	return nbdkit(t, options{}, args)
}

func nbdkit(t testing.TB, o options, args []string) *Server {
	t.Helper()
	Need(t, "nbdkit")
	ep := o.endpoint(t)
	argv := append(ep.prefix, "nbdkit", "-f", "--exit-with-parent", "-i", ep.host, "-p", strconv.Itoa(ep.port))
	return startForeground(t, "nbdkit", ep, append(argv, args...))
}

// NbdServer writes an nbd-server configuration serving exports (name → file,
// in name order; the listing is allowed) on a free port and starts
// nbd-server with it. With TLS(dir) every option but STARTTLS is refused in
// plaintext (force_tls) and the server loads dir's ca-cert.pem as its
// cacertfile: nbd-server 3.24 drops every TLS session without one, and with
// one it requires a client certificate signed by that CA, so VerifyPeer is
// implied.
func NbdServer(t testing.TB, exports map[string]string, opts ...Option) *Server {
	t.Helper()
	Need(t, "nbd-server")
	o := collect(opts)
	dir := t.TempDir()
	ep := o.endpoint(t)

	var conf strings.Builder
	fmt.Fprintf(&conf, "[generic]\nlistenaddr = %s\nport = %d\nallowlist = true\n", ep.host, ep.port)
	if o.tlsDir != "" {
		fmt.Fprintf(&conf, "certfile = %s\nkeyfile = %s\ncacertfile = %s\nforce_tls = true\n",
			filepath.Join(o.tlsDir, "server-cert.pem"),
			filepath.Join(o.tlsDir, "server-key.pem"),
			filepath.Join(o.tlsDir, "ca-cert.pem"))
	}
	for _, line := range o.extra {
		conf.WriteString(line + "\n")
	}
	names := make([]string, 0, len(exports))
	for name := range exports {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		path, err := filepath.Abs(exports[name])
		if err != nil {
			t.Fatalf("testrig: %v", err)
		}
		fmt.Fprintf(&conf, "[%s]\nexportname = %s\n", name, path)
		if o.readOnly {
			conf.WriteString("readonly = true\n")
		}
	}
	confPath := filepath.Join(dir, "nbd-server.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o644); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	s := &Server{
		Kind:    "nbd-server",
		Host:    ep.host,
		Addr:    net.JoinHostPort(ep.host, strconv.Itoa(ep.port)),
		Port:    ep.port,
		dial:    ep.dial,
		t:       t,
		argv:    append(ep.prefix, "nbd-server", "-C", confPath, "-p", filepath.Join(dir, "nbd-server.pid")),
		pidFile: filepath.Join(dir, "nbd-server.pid"),
	}
	if err := s.start(); err != nil {
		t.Fatalf("testrig: %v\nconfiguration:\n%s", err, conf.String())
	}
	t.Cleanup(s.Stop)
	return s
}

func collect(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func startForeground(t testing.TB, kind string, ep endpoint, argv []string) *Server {
	t.Helper()
	s := &Server{
		Kind: kind,
		Host: ep.host,
		Addr: net.JoinHostPort(ep.host, strconv.Itoa(ep.port)),
		Port: ep.port,
		dial: ep.dial,
		t:    t,
		argv: argv,
	}
	if err := s.start(); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// start launches the server and waits until it accepts connections.
func (s *Server) start() error {
	if s.pidFile == "" {
		if s.proc == nil {
			s.proc = &Process{argv: s.argv, out: &SyncBuffer{}}
		}
		if err := s.proc.start(); err != nil {
			return err
		}
		if err := s.waitReady(); err != nil {
			s.proc.Stop()
			return fmt.Errorf("%w\n%s output:\n%s", err, s.Kind, s.proc.Output())
		}
		return nil
	}

	// nbd-server: the foreground process reads the configuration, opens the
	// socket, forks and exits.
	_ = os.Remove(s.pidFile)
	p := &Process{argv: s.argv, out: &SyncBuffer{}}
	if err := p.start(); err != nil {
		return err
	}
	if err := p.Wait(ReadyTimeout); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(s.argv, " "), err, p.Output())
	}
	deadline := time.Now().Add(ReadyTimeout)
	for {
		data, err := os.ReadFile(s.pidFile)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && perr == nil && pid > 0 {
			s.pid = pid
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no pid in %s after %v\n%s", strings.Join(s.argv, " "), s.pidFile, ReadyTimeout, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.waitReady(); err != nil {
		_ = killPid(s.pid)
		return fmt.Errorf("%w\n%s output:\n%s", err, s.Kind, p.Output())
	}
	return nil
}

// waitReady polls a TCP connect until it succeeds, the server exits or
// ReadyTimeout passes.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(ReadyTimeout)
	for {
		c, err := s.dial(s.Addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if s.proc != nil {
			if exited, werr := s.proc.Exited(); exited {
				return fmt.Errorf("%s exited before listening on %s: %v", strings.Join(s.argv, " "), s.Addr, werr)
			}
		} else if waitGone(s.pid, 0) {
			return fmt.Errorf("%s (pid %d) died before listening on %s", strings.Join(s.argv, " "), s.pid, s.Addr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not listening on %s after %v: %v", strings.Join(s.argv, " "), s.Addr, ReadyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after StopTimeout) and waits
// for it to be gone. Connections it served are dropped. It is safe to call
// more than once; the test's cleanup calls it.
func (s *Server) Stop() {
	if s.proc != nil {
		s.proc.Stop()
		return
	}
	if s.pid > 0 {
		// nbd-server forks a child per connection, in the process group
		// it made when it daemonized (setsid): stop the group, or a child
		// still holding the listening socket keeps the port answering.
		pgid, gerr := syscall.Getpgid(s.pid)
		if err := killPid(s.pid); err != nil {
			s.t.Errorf("testrig: stopping %s: %v", s.Kind, err)
		}
		if gerr == nil && pgid == s.pid {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		s.pid = 0
		if err := s.waitClosed(StopTimeout); err != nil {
			s.t.Errorf("testrig: stopping %s: %v", s.Kind, err)
		}
	}
}

// waitClosed polls until nothing accepts connections on the server's address.
func (s *Server) waitClosed(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := s.dial(s.Addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still accepts connections after %v", s.Addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Restart stops the server and starts it again on the same port with the
// same data (for reconnect tests). A memory-backed nbdkit starts empty.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("testrig: restarting %s: %v", s.Kind, err)
	}
}

// Output returns what a foreground server (qemu-nbd, nbdkit) has written so
// far; nbd-server logs to syslog once detached, so it has none.
func (s *Server) Output() string {
	if s.proc == nil {
		return ""
	}
	return s.proc.Output()
}

// String is the kind and address, for messages.
func (s *Server) String() string { return s.Kind + " on " + s.Addr }
