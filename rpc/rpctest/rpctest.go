// Package rpctest starts Palisade servers on loopback for tests.
package rpctest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// Server is a running test server.
type Server struct {
	*rpc.Server
	*Logs
	// URL is the base URL, "https://127.0.0.1:<port>".
	URL string
	// Addr is "127.0.0.1:<port>".
	Addr string
	stop context.CancelFunc
	done chan error
}

// Start builds a server with rpc.NewServer (logging to a NewLogger), lets
// mount add services, and serves it on 127.0.0.1 on a free port until the
// test ends.
func Start(tb testing.TB, src mtls.Source, authorizer authz.Authorizer, mount func(*rpc.Server) error, opts ...rpc.ServerOption) *Server {
	tb.Helper()
	logger, logs := NewLogger(tb)
	srv, err := rpc.NewServer(src, authorizer, append([]rpc.ServerOption{rpc.WithLogger(logger)}, opts...)...)
	if err != nil {
		tb.Fatalf("rpctest: new server: %v", err)
	}
	if mount != nil {
		if err := mount(srv); err != nil {
			tb.Fatalf("rpctest: mount: %v", err)
		}
	}
	return Serve(tb, srv, logs)
}

// Serve serves srv on 127.0.0.1 on a free port until the test ends. logs
// are the lines of the logger srv was built with (from NewLogger), or nil.
func Serve(tb testing.TB, srv *rpc.Server, logs *Logs) *Server {
	tb.Helper()
	return ServeAt(tb, srv, logs, "127.0.0.1:0")
}

// ServeAt is Serve on addr, for a test that restarts a server where its
// clients expect it ("127.0.0.1:0" picks a free port).
func ServeAt(tb testing.TB, srv *rpc.Server, logs *Logs, addr string) *Server {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("rpctest: listen: %v", err)
	}
	if logs == nil {
		logs = &Logs{}
		tb.Cleanup(func() { logs.report(tb) })
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Server: srv, Logs: logs, URL: "https://" + ln.Addr().String(), Addr: ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, ln) }()
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("rpctest: stop: %v", err)
		}
	})
	return s
}

// Stop drains the server and waits for Serve to return. It may be called
// more than once.
func (s *Server) Stop() error {
	s.stop()
	err, ok := <-s.done
	if !ok {
		return nil
	}
	close(s.done)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// NewLogger returns a debug-level text logger that keeps every line in the
// returned Logs. When the test ends, the lines go to the test's log: all of
// them with -v, else the last shownLines if the test failed, so a load test's
// thousands of lines do not bury its failure. Like a service's logger, it
// adds the request id of the call to each line (rpc.LogHandler).
func NewLogger(tb testing.TB) (*slog.Logger, *Logs) {
	logs := &Logs{}
	tb.Cleanup(func() { logs.report(tb) }) // after servers stop: cleanups run last-in first-out
	return slog.New(rpc.LogHandler(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))), logs
}

// shownLines is how many of its last log lines a failed test shows.
const shownLines = 200

// Logs keeps the lines a NewLogger logger wrote.
type Logs struct {
	mu    sync.Mutex
	lines []string
}

// Write implements io.Writer.
func (l *Logs) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return len(p), nil
}

func (l *Logs) report(tb testing.TB) {
	lines := l.Lines()
	if !testing.Verbose() {
		if !tb.Failed() {
			return
		}
		if len(lines) > shownLines {
			tb.Logf("server log: %d lines, the last %d:", len(lines), shownLines)
			lines = lines[len(lines)-shownLines:]
		}
	}
	for _, line := range lines {
		tb.Log(line)
	}
}

func (l *Logs) find(substrs []string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		return line, true
	}
	return "", false
}

// WaitForLog waits up to 5 seconds for a log line containing every one of
// substrs and returns it; it fails the test if none appears. Server logs of
// a refused handshake are written asynchronously to the client's error,
// hence the wait.
func (l *Logs) WaitForLog(tb testing.TB, substrs ...string) string {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if line, ok := l.find(substrs); ok {
			return line
		}
		if time.Now().After(deadline) {
			tb.Fatalf("rpctest: no log line contains all of %q", substrs)
			return ""
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Count returns how many lines so far contain substr.
func (l *Logs) Count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// Lines returns the lines so far.
func (l *Logs) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}
