package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// MetricsPath is where the admin listener serves the metrics.
const MetricsPath = "/metrics"

// Admin is the admin listener: plain HTTP, on a loopback address only,
// serving MetricsPath. It carries nothing secret (counts, the policy
// revision, SPIFFE IDs, a certificate's expiry time) and changes nothing,
// and loopback keeps it off the network: scrape it from the same host, or
// through an agent that runs there.
type Admin struct {
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// ListenAdmin listens on addr, which must be a loopback address with a
// port ("127.0.0.1:9464", "[::1]:9464", "localhost:9464"; port 0 picks
// one), and serves t's metrics there once Serve is called. It logs to t's
// logger (WithLogger).
func ListenAdmin(ctx context.Context, addr string, t *Telemetry) (*Admin, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: admin address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("telemetry: admin address %q: the admin listener is plain HTTP and binds a loopback address only", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: admin listener: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		_ = ln.Close()
		return nil, fmt.Errorf("telemetry: admin address %q resolved to %s, not a loopback address", addr, ln.Addr())
	}
	logger := t.logger
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, t.MetricsHandler())
	return &Admin{
		ln: ln,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
		log: logger,
	}, nil
}

// Addr returns the address the admin listener listens on.
func (a *Admin) Addr() net.Addr { return a.ln.Addr() }

// Serve serves until ctx is done, then closes the listener and returns nil
// (or the error that stopped it earlier).
func (a *Admin) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	a.log.Info("admin listener serving", "addr", a.ln.Addr().String(), "metrics", MetricsPath)
	select {
	case err := <-errc:
		return fmt.Errorf("telemetry: admin listener: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	err := a.srv.Shutdown(shutdownCtx)
	if err != nil {
		_ = a.srv.Close() // a scrape still running after the grace period is cut off
	}
	<-errc // Serve returns http.ErrServerClosed once Shutdown starts
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("telemetry: admin listener shutdown: %w", err)
	}
	return nil
}
