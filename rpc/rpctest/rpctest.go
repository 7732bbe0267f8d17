// Package rpctest starts Palisade servers on loopback for tests.
package rpctest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// Server is a running test server.
type Server struct {
	*rpc.Server
	// URL is the base URL, "https://127.0.0.1:<port>".
	URL string
	// Addr is "127.0.0.1:<port>".
	Addr string
	stop context.CancelFunc
	done chan error
	logs *testWriter
}

// Start builds a server with rpc.NewServer, lets mount add services, and
// serves it on 127.0.0.1 on a free port until the test ends.
func Start(tb testing.TB, src mtls.Source, authz policy.Authorizer, mount func(*rpc.Server) error, opts ...rpc.ServerOption) *Server {
	tb.Helper()
	w := &testWriter{tb: tb}
	tb.Cleanup(func() { w.done.Store(true) }) // runs after Stop: cleanups run last-in first-out
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := rpc.NewServer(src, authz, append([]rpc.ServerOption{rpc.WithLogger(logger)}, opts...)...)
	if err != nil {
		tb.Fatalf("rpctest: new server: %v", err)
	}
	if mount != nil {
		if err := mount(srv); err != nil {
			tb.Fatalf("rpctest: mount: %v", err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("rpctest: listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Server: srv, URL: "https://" + ln.Addr().String(), Addr: ln.Addr().String(), stop: cancel, done: make(chan error, 1), logs: w}
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

// testWriter sends log output to the test's log, shown only on failure or with -v.
// Output after the test has finished is dropped (testing panics on it).
// Every line is also kept, for Server.WaitForLog.
type testWriter struct {
	tb   testing.TB
	done atomic.Bool

	mu    sync.Mutex
	lines []string
}

func (w *testWriter) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	w.mu.Lock()
	w.lines = append(w.lines, line)
	w.mu.Unlock()
	if !w.done.Load() {
		w.tb.Log(line)
	}
	return len(p), nil
}

func (w *testWriter) find(substrs []string) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
next:
	for _, l := range w.lines {
		for _, s := range substrs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		return l, true
	}
	return "", false
}

// WaitForLog waits up to 5 seconds for a server log line containing every
// one of substrs and returns it; it fails the test if none appears. Server
// logs of a refused handshake are written asynchronously to the client's
// error, hence the wait.
func (s *Server) WaitForLog(tb testing.TB, substrs ...string) string {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if line, ok := s.logs.find(substrs); ok {
			return line
		}
		if time.Now().After(deadline) {
			tb.Fatalf("rpctest: no server log line contains all of %q", substrs)
			return ""
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Logs returns the server's log lines so far.
func (s *Server) Logs() []string {
	s.logs.mu.Lock()
	defer s.logs.mu.Unlock()
	return append([]string(nil), s.logs.lines...)
}
