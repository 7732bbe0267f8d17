// Package rpctest starts Palisade servers on loopback for tests.
package rpctest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"

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
	s := &Server{Server: srv, URL: "https://" + ln.Addr().String(), Addr: ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
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
type testWriter struct {
	tb   testing.TB
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
