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

// Paths the admin listener serves.
const (
	// MetricsPath serves the metrics (Prometheus text format).
	MetricsPath = "/metrics"
	// HealthPath answers 200 while the service serves, 503 otherwise
	// (WithHealth): for load balancers and the kubelet's probes, which
	// cannot make the mTLS handshake of the RPC port.
	HealthPath = "/healthz"
)

// Admin is the admin listener: plain HTTP serving MetricsPath and, with
// WithHealth, HealthPath. It carries nothing secret (counts, the policy
// revision, SPIFFE IDs, a certificate's expiry time, whether the service
// serves) and changes nothing. It binds a loopback address only, which
// keeps it off the network — scrape it from the same host, or through an
// agent that runs there — unless WithRemoteAccess lets it bind any address
// (in a pod, for Prometheus and the kubelet); then restrict who reaches it
// with the network (a Kubernetes NetworkPolicy, a firewall).
type Admin struct {
	ln     net.Listener
	srv    *http.Server
	log    *slog.Logger
	remote bool
}

// AdminOption configures ListenAdmin.
type AdminOption interface {
	applyAdmin(*adminConfig)
}

type adminConfig struct {
	remote  bool
	serving func() bool
}

type adminOptionFunc func(*adminConfig)

func (f adminOptionFunc) applyAdmin(c *adminConfig) { f(c) }

// WithRemoteAccess lets the admin listener bind an address that is not
// loopback (":9090", a pod's address), so that something outside the host
// — Prometheus, the kubelet's probes — can reach it. It is plain HTTP
// without authentication: restrict who reaches the port with the network.
func WithRemoteAccess() AdminOption {
	return adminOptionFunc(func(c *adminConfig) { c.remote = true })
}

// WithHealth serves HealthPath: GET answers 200 "serving" while serving
// reports true, and 503 "not serving" otherwise. Pass rpc.Server.Serving,
// which is true from the start of Serve until the drain begins, so a probe
// fails before the service serves and as soon as it begins to drain.
func WithHealth(serving func() bool) AdminOption {
	return adminOptionFunc(func(c *adminConfig) { c.serving = serving })
}

// ListenAdmin listens on addr and serves t's metrics there (and the health
// check, WithHealth) once Serve is called. addr must be a loopback address
// with a port ("127.0.0.1:9464", "[::1]:9464", "localhost:9464"; port 0
// picks one) unless WithRemoteAccess. It logs to t's logger (WithLogger).
func ListenAdmin(ctx context.Context, addr string, t *Telemetry, opts ...AdminOption) (*Admin, error) {
	var cfg adminConfig
	for _, o := range opts {
		o.applyAdmin(&cfg)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: admin address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); !cfg.remote && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("telemetry: admin address %q: the admin listener is plain HTTP and binds a loopback address only, unless remote access is allowed", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: admin listener: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !cfg.remote && (!ok || !tcp.IP.IsLoopback()) {
		_ = ln.Close()
		return nil, fmt.Errorf("telemetry: admin address %q resolved to %s, not a loopback address", addr, ln.Addr())
	}
	logger := t.logger
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, t.MetricsHandler())
	if cfg.serving != nil {
		mux.Handle("GET "+HealthPath, healthHandler(cfg.serving))
	}
	return &Admin{
		ln: ln,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
		log:    logger,
		remote: cfg.remote,
	}, nil
}

// healthHandler answers HealthPath.
func healthHandler(serving func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !serving() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not serving\n"))
			return
		}
		_, _ = w.Write([]byte("serving\n"))
	})
}

// Addr returns the address the admin listener listens on.
func (a *Admin) Addr() net.Addr { return a.ln.Addr() }

// Serve serves until ctx is done, then closes the listener and returns nil
// (or the error that stopped it earlier).
func (a *Admin) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	a.log.Info("admin listener serving", "addr", a.ln.Addr().String(), "metrics", MetricsPath, "remote", a.remote)
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
