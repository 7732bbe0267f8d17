// Package svcmain is the shared main of Palisade's service binaries: the
// flags every service has (listen address, certificate files, trust domain,
// logging, drain grace period, telemetry), the logger, the admin listener,
// and the signal handling that turns SIGINT/SIGTERM into a graceful drain.
package svcmain

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/telemetry"
)

// DefaultHome is where the demo keeps its state (certificates, databases, logs).
const DefaultHome = ".palisade"

// Flags are the flags common to every service binary.
type Flags struct {
	Addr           string
	CA             string
	Cert           string
	Key            string
	TrustDomain    string
	LogLevel       string
	LogFormat      string
	ShutdownGrace  time.Duration
	PolicyDir      string
	PolicyBundle   string
	PolicyInterval time.Duration
	// PolicyAllowUntested loads policy versions without rego tests
	// (policy.WithUntestedPolicies), each logged as a warning.
	PolicyAllowUntested bool
	// PolicyData is a JSON file laid over the policy layer's data.json
	// (policy.WithData): the deployment's configuration of the rules.
	PolicyData string
	// CRL is an optional certificate revocation list; CertReloadInterval is
	// how often the certificate, key, CA bundle and CRL files are checked.
	CRL                string
	CertReloadInterval time.Duration
	// AdminAddr is the admin listener's address (metrics); TraceStdout
	// writes spans to stdout.
	AdminAddr   string
	TraceStdout bool
	// RateLimit and RateBurst configure rpc.WithRateLimit (0: off).
	RateLimit float64
	RateBurst int
	// MaxConnectionAge configures rpc.WithMaxConnectionAge (0: off), with
	// ShutdownGrace as its grace.
	MaxConnectionAge time.Duration
}

// Register defines the common flags on fs. name is the service's file name in
// the dev PKI ("usersvc" → .palisade/certs/usersvc.pem).
func (f *Flags) Register(fs *flag.FlagSet, name, defaultAddr string) {
	certs := filepath.Join(DefaultHome, "certs")
	fs.StringVar(&f.Addr, "addr", defaultAddr, "`host:port` to listen on (TLS; Connect, gRPC and gRPC-Web on one port)")
	fs.StringVar(&f.CA, "ca", filepath.Join(certs, "ca.pem"), "PEM `file` of the CA bundle that signs client and server certificates")
	fs.StringVar(&f.Cert, "cert", filepath.Join(certs, name+".pem"), "PEM `file` of this service's certificate (its SPIFFE ID is the URI SAN)")
	fs.StringVar(&f.Key, "key", filepath.Join(certs, name+"-key.pem"), "PEM `file` of this service's private key")
	fs.StringVar(&f.TrustDomain, "trust-domain", "", "SPIFFE trust `domain` whose workloads may call this service, and whose servers it calls (default: the trust domain of --cert)")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&f.LogFormat, "log-format", "json", "log `format`: json or text")
	fs.DurationVar(&f.ShutdownGrace, "shutdown-grace", rpc.DefaultShutdownGrace, "on SIGINT/SIGTERM, the `duration` in-flight calls may still run before they are cut off")
	fs.DurationVar(&f.MaxConnectionAge, "max-connection-age", 0, "ask each client to move to a new connection once its connection is about this `duration` old (±10%), so that connections spread again over the replicas behind a load balancer; calls in flight then get --shutdown-grace to finish. 0: never")
	fs.StringVar(&f.PolicyDir, "policy-dir", "", "`directory` of this service's policy layer (rego rules and their *_test.rego tests, data.json) to use instead of the embedded one, on Palisade's base policy; watched, and a changed policy is swapped in only if it compiles and its tests pass")
	fs.StringVar(&f.PolicyBundle, "policy-bundle", "", "OPA bundle (tar.gz) `path or URL` to take this service's policy layer from, polled with the same tests-before-swap rule; an https URL is fetched over mTLS with this service's certificate by OPA's downloader (ETag, long polling)")
	fs.DurationVar(&f.PolicyInterval, "policy-reload-interval", 2*time.Second, "how often to check --policy-dir or --policy-bundle for changes (`duration`); a source that cannot be read, or a version refused, is tried again after a delay that doubles from it up to 2m")
	fs.BoolVar(&f.PolicyAllowUntested, "policy-allow-untested", false, "UNSAFE: load a policy version from --policy-dir or --policy-bundle even if it carries no rego test (*_test.rego), logging a warning each time; by default such a version is refused (at start-up the service does not start)")
	fs.StringVar(&f.PolicyData, "policy-data", "", "JSON `file` laid over the policy layer's data.json, e.g. {\"palisade\": {\"config\": {\"delegates\": [...]}}}: objects are merged key by key, any other value replaces the layer's; data.palisade.config.trust_domain is this service's trust domain unless the file says otherwise")
	fs.StringVar(&f.CRL, "crl", "", "PEM or DER `file` of a certificate revocation list signed by a CA of --ca (e.g. .palisade/certs/crl.pem from 'palisade certs revoke'); peers with a revoked certificate fail the handshake")
	fs.DurationVar(&f.CertReloadInterval, "cert-reload-interval", 2*time.Second, "how often to check --cert, --key, --ca and --crl for changes (`duration`; 0 never); changed files are validated in full before they are used, and refused (and logged) otherwise")
	fs.StringVar(&f.AdminAddr, "admin-addr", "", "`host:port` of the admin listener: plain HTTP on a loopback address, serving Prometheus metrics at /metrics (off when empty)")
	fs.BoolVar(&f.TraceStdout, "trace-stdout", false, "write every trace span to stdout, one JSON object per line (OpenTelemetry stdout exporter)")
	fs.Float64Var(&f.RateLimit, "rate-limit", 0, "calls per second each principal (the token's user, else the workload) may make on average; past it, resource_exhausted (429) with Retry-After (`rate`; 0 = no limit)")
	fs.IntVar(&f.RateBurst, "rate-burst", 0, "calls a principal may make at once under --rate-limit (`n`; default --rate-limit rounded up)")
}

// Telemetry returns the tracing and metrics the flags ask for: spans to
// stdout with --trace-stdout, metrics with --admin-addr. Without either,
// the providers are no-ops. The admin listener logs to logger.
func (f *Flags) Telemetry(service string, logger *slog.Logger) (*telemetry.Telemetry, error) {
	opts := []telemetry.Option{telemetry.WithLogger(logger)}
	if f.AdminAddr != "" {
		opts = append(opts, telemetry.WithMetrics())
	}
	if f.TraceStdout {
		opts = append(opts, telemetry.WithTraceWriter(os.Stdout))
	}
	return telemetry.New(service, opts...)
}

// Serve serves srv on --addr and, with --admin-addr, the admin listener,
// until ctx is done; then it flushes and stops tel.
func (f *Flags) Serve(ctx context.Context, srv *rpc.Server, tel *telemetry.Telemetry, logger *slog.Logger) error {
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(flushCtx); err != nil {
			logger.Warn("telemetry shutdown", "error", err)
		}
	}()
	if f.AdminAddr == "" {
		return srv.ListenAndServe(ctx, f.Addr)
	}
	admin, err := telemetry.ListenAdmin(ctx, f.AdminAddr, tel)
	if err != nil {
		return fmt.Errorf("--admin-addr: %w", err)
	}
	adminCtx, stopAdmin := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- admin.Serve(adminCtx) }()
	err = srv.ListenAndServe(ctx, f.Addr)
	stopAdmin()
	if adminErr := <-done; err == nil {
		err = adminErr
	}
	return err
}

// Logger returns the logger the flags ask for, writing to stderr.
func (f *Flags) Logger(service string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(f.LogFormat) {
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	default:
		return nil, fmt.Errorf("--log-format: %q is not json or text", f.LogFormat)
	}
	// Every line logged for a call carries the call's request id.
	return slog.New(rpc.LogHandler(h)).With("service", service), nil
}

// Source loads the service's certificate, key and CA bundle, and the CRL
// when --crl is set; logger records reloads and refused files.
func (f *Flags) Source(logger *slog.Logger) (*mtls.FileSource, error) {
	opts := []mtls.FileSourceOption{mtls.WithLogger(logger)}
	if f.CRL != "" {
		opts = append(opts, mtls.WithCRL(f.CRL))
	}
	src, err := mtls.NewFileSource(f.Cert, f.Key, f.CA, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w (run `bin/palisade certs init` to create a development PKI)", err)
	}
	return src, nil
}

// WatchSource keeps reloading src's files every --cert-reload-interval
// until ctx is done, so certificates rotate without a restart.
func (f *Flags) WatchSource(ctx context.Context, src *mtls.FileSource) {
	if f.CertReloadInterval > 0 {
		go func() { _ = src.Watch(ctx, f.CertReloadInterval) }()
	}
}

// ServerOptions returns the rpc options the common flags set.
func (f *Flags) ServerOptions(logger *slog.Logger) []rpc.ServerOption {
	opts := []rpc.ServerOption{
		rpc.WithLogger(logger),
		rpc.WithShutdownGrace(f.ShutdownGrace),
		rpc.WithRateLimit(f.RateLimit, f.RateBurst),
	}
	if f.MaxConnectionAge > 0 {
		opts = append(opts, rpc.WithMaxConnectionAge(f.MaxConnectionAge, f.ShutdownGrace))
	}
	if f.TrustDomain != "" {
		opts = append(opts, rpc.WithTrustDomain(f.TrustDomain))
	}
	return opts
}

// Authorizer returns the OPA policy engine the flags ask for: the base
// policy and the service's layer — layer, the one it embeds (origin names
// it), --policy-dir or --policy-bundle — and, for the latter two, keeps
// reloading it until ctx is done. The initial policy must compile
// and pass its tests (and have some, unless --policy-allow-untested), or the
// service does not start.
func (f *Flags) Authorizer(ctx context.Context, logger *slog.Logger, src mtls.Source, layer fs.FS, origin string) (*policy.Engine, error) {
	var load policy.Loader
	switch {
	case f.PolicyDir != "" && f.PolicyBundle != "":
		return nil, errors.New("--policy-dir and --policy-bundle are exclusive")
	case f.PolicyDir != "":
		load = policy.DirLoader(f.PolicyDir)
	case strings.HasPrefix(f.PolicyBundle, "https://"):
		return f.bundleAuthorizer(ctx, logger, src)
	case f.PolicyBundle != "":
		load = policy.BundleLoader(f.PolicyBundle)
	default:
		load = func(context.Context) (*policy.Bundle, error) { return policy.LoadFS(layer, origin) }
	}
	b, err := load(ctx)
	if err != nil {
		return nil, err
	}
	opts := []policy.EngineOption{policy.WithLogger(logger)}
	data, err := f.policyData(src)
	if err != nil {
		return nil, err
	}
	for _, doc := range data {
		opts = append(opts, policy.WithData(doc))
	}
	if f.PolicyAllowUntested {
		opts = append(opts, policy.WithUntestedPolicies())
	}
	engine, err := policy.NewEngine(ctx, b, opts...)
	if errors.Is(err, policy.ErrUntested) {
		return nil, fmt.Errorf("%s: %w (add *_test.rego tests, or start with --policy-allow-untested)", b.Origin, err)
	}
	if err != nil {
		return nil, err
	}
	if f.PolicyDir != "" || f.PolicyBundle != "" {
		if f.PolicyInterval <= 0 {
			return nil, fmt.Errorf("--policy-reload-interval %s is not positive", f.PolicyInterval)
		}
		go func() { _ = engine.Watch(ctx, load, f.PolicyInterval) }()
	}
	return engine, nil
}

// policyData returns the documents laid over the layer's data: the
// service's trust domain (--trust-domain, or its certificate's) as
// data.palisade.config.trust_domain, then --policy-data's file.
func (f *Flags) policyData(src mtls.Source) ([]map[string]any, error) {
	var docs []map[string]any
	td := f.TrustDomain
	if td == "" && src != nil {
		id, err := mtls.IdentityOf(src)
		if err != nil {
			return nil, fmt.Errorf("policy data: %w", err)
		}
		td = id.TrustDomain()
	}
	if td != "" {
		docs = append(docs, map[string]any{"palisade": map[string]any{"config": map[string]any{"trust_domain": td}}})
	}
	if f.PolicyData != "" {
		raw, err := os.ReadFile(f.PolicyData)
		if err != nil {
			return nil, fmt.Errorf("--policy-data: %w", err)
		}
		var doc map[string]any
		if err := json.Unmarshal(raw, &doc); err != nil {
			return nil, fmt.Errorf("--policy-data %s: not a JSON object: %w", f.PolicyData, err)
		}
		if doc == nil {
			return nil, fmt.Errorf("--policy-data %s: not a JSON object", f.PolicyData)
		}
		docs = append(docs, doc)
	}
	return docs, nil
}

// bundleAuthorizer is Authorizer for a bundle server: OPA's downloader,
// over mTLS with this service's certificate, polled between
// --policy-reload-interval (at least a second) and twice that.
func (f *Flags) bundleAuthorizer(ctx context.Context, logger *slog.Logger, src mtls.Source) (*policy.Engine, error) {
	var opts []rpc.ClientOption
	if f.TrustDomain != "" {
		opts = append(opts, rpc.WithTrustDomain(f.TrustDomain))
	}
	client, err := rpc.NewHTTPClient(src, opts...)
	if err != nil {
		return nil, err
	}
	delay := max(f.PolicyInterval, time.Second)
	bundles, err := policy.NewBundleSource(f.PolicyBundle, client, policy.WithLogger(logger), policy.WithPollingDelay(delay, 2*delay))
	if err != nil {
		return nil, err
	}
	var engineOpts []policy.EngineOption
	if f.PolicyAllowUntested {
		engineOpts = append(engineOpts, policy.WithUntestedPolicies())
	}
	engine, err := bundles.NewEngine(ctx, engineOpts...)
	if errors.Is(err, policy.ErrUntested) {
		return nil, fmt.Errorf("%w (add *_test.rego tests, or start with --policy-allow-untested)", err)
	}
	if err != nil {
		return nil, err
	}
	go func() { _ = bundles.Run(ctx) }()
	return engine, nil
}

// SignalContext returns a context that is done on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// Usage returns a flag.FlagSet Usage function that prints a description
// before the flag defaults.
func Usage(fs *flag.FlagSet, description string) func() {
	return func() {
		fmt.Fprintf(fs.Output(), "%s\n\nUsage: %s [flags]\n\nFlags:\n", strings.TrimSpace(description), fs.Name())
		fs.PrintDefaults()
	}
}

// Base is what every service binary starts from: its logger, its
// certificate source (watched for rotation until the context ends) and the
// stop function of the signal context Start returns.
type Base struct {
	Logger *slog.Logger
	Source *mtls.FileSource
	// Stop releases the signal context; call it when the service returns.
	Stop context.CancelFunc
}

// Start builds the logger and the certificate source the flags ask for and
// returns a context that SIGINT or SIGTERM ends, with the source watched
// for rotation until then.
func (f *Flags) Start(service string) (context.Context, *Base, error) {
	logger, err := f.Logger(service)
	if err != nil {
		return nil, nil, err
	}
	src, err := f.Source(logger)
	if err != nil {
		return nil, nil, err
	}
	ctx, stop := SignalContext()
	f.WatchSource(ctx, src)
	return ctx, &Base{Logger: logger, Source: src, Stop: stop}, nil
}
