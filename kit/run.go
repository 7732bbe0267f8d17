package kit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/authz/decisionlog"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/telemetry"
)

// run is Run once the options are applied.
func run(ctx context.Context, cfg *config, args []string, setup func(*Service) error) (err error) {
	var f flags
	fs := flag.NewFlagSet(cfg.name, flag.ContinueOnError)
	fs.SetOutput(cfg.logOutput)
	f.define(fs, cfg)
	for _, define := range cfg.flags {
		define(fs)
	}
	fs.Usage = usage(fs, cfg.description)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting is a flag (see --help)", fs.Args())
	}
	if err := f.validate(fs); err != nil {
		return err
	}
	logger, err := f.logger(cfg.name, cfg.logOutput)
	if err != nil {
		return err
	}

	// From here on everything started is stopped by stopAll, whatever
	// happens.
	stopCtx, stop := context.WithCancelCause(ctx)
	r := &runner{cfg: cfg, f: &f, log: logger, stop: stop}
	r.svc = &Service{Logger: logger, ctx: stopCtx, loops: newLoops(logger, stop)}
	defer func() { err = r.stopAll(err) }()

	if err := r.source(stopCtx); err != nil {
		return err
	}
	if err := r.telemetry(); err != nil {
		return err
	}
	engine, err := r.policy(stopCtx)
	if err != nil {
		return err
	}
	verifier, err := r.verifier()
	if err != nil {
		return err
	}
	opts := []rpc.ServerOption{
		rpc.WithLogger(logger),
		rpc.WithShutdownGrace(f.grace),
		rpc.WithRateLimit(f.rateLimit, f.rateBurst),
	}
	if f.maxConnectionAge > 0 {
		opts = append(opts, rpc.WithMaxConnectionAge(f.maxConnectionAge, f.grace))
	}
	if f.trustDomain != "" {
		opts = append(opts, rpc.WithTrustDomain(f.trustDomain))
	}
	opts = append(opts, r.tel.ServerOptions()...)
	if f.decisionLogInput {
		opts = append(opts, rpc.WithAuthorizationOptions(authz.WithDecisionLogInput(nil)))
	}
	if hook, err := r.decisionLog(); err != nil {
		return err
	} else if hook != nil {
		opts = append(opts, rpc.WithAuthorizationOptions(authz.WithDecisionHook(hook)))
	}
	if verifier != nil {
		opts = append(opts, rpc.WithTokenVerifier(verifier))
	}
	if r.svc.Server, err = rpc.NewServer(r.svc.Source, engine, append(opts, cfg.serverOptions...)...); err != nil {
		return err
	}
	if err := r.admin(); err != nil {
		return err
	}
	if err := setup(r.svc); err != nil {
		return err
	}
	if stopCtx.Err() != nil {
		return nil // stopping already: a signal, or a loop failed (stopAll says which)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(stopCtx, "tcp", f.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	return r.svc.Server.Serve(stopCtx, ln)
}

// runner holds what run builds, for stopAll.
type runner struct {
	cfg  *config
	f    *flags
	log  *slog.Logger
	stop context.CancelCauseFunc
	svc  *Service
	tel  *telemetry.Telemetry

	closeSource func() error   // the Workload API source's Close
	httpClients []*http.Client // made by the kit; their idle connections are closed at the end

	// The admin listener and the decision log shipper outlive the drain
	// (/healthz answers 503 meanwhile, and the decisions of the calls
	// draining are shipped): they have a context and loops of their own,
	// stopped after the service's.
	lateCtx   context.Context
	lateStop  context.CancelFunc
	lateLoops *loops
}

// goLate runs loop until after the drain and the service's loops.
func (r *runner) goLate(name string, loop func(context.Context) error) {
	if r.lateLoops == nil {
		r.lateCtx, r.lateStop = context.WithCancel(context.WithoutCancel(r.svc.ctx))
		r.lateLoops = newLoops(r.log, r.stop)
	}
	r.lateLoops.start(r.lateCtx, name, loop)
}

// stopAll stops what run started, in order, and returns err joined with
// whatever failed on the way: the loops' failures come first, since a
// failed loop is why the service stopped.
func (r *runner) stopAll(err error) error {
	r.stop(nil)
	loopErrs := r.svc.loops.wait()
	if r.lateStop != nil {
		r.lateStop()
		loopErrs = errors.Join(loopErrs, r.lateLoops.wait())
	}
	for _, c := range r.httpClients {
		c.CloseIdleConnections()
	}
	var errs []error
	if r.closeSource != nil {
		if err := r.closeSource(); err != nil {
			r.log.Warn("closing the certificate source", "error", err.Error())
		}
	}
	if r.tel != nil {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := r.tel.Shutdown(flushCtx); err != nil {
			r.log.Warn("telemetry shutdown", "error", err.Error())
		}
		cancel()
	}
	errs = append(errs, loopErrs, err, r.svc.runCleanups())
	return errors.Join(errs...)
}

// telemetry builds the tracing and metrics the flags ask for: spans to
// stdout with --trace-stdout, metrics with --admin-addr; without either,
// no-op providers.
func (r *runner) telemetry() error {
	opts := []telemetry.Option{telemetry.WithLogger(r.log)}
	if r.f.adminAddr != "" {
		opts = append(opts, telemetry.WithMetrics())
	}
	if r.f.traceStdout {
		opts = append(opts, telemetry.WithTraceWriter(r.cfg.stdout))
	}
	if r.f.otlpEndpoint != "" {
		opts = append(opts, telemetry.WithOTLP(r.f.otlpEndpoint, r.svc.Source))
	}
	tel, err := telemetry.New(r.cfg.name, opts...)
	if err != nil {
		return err
	}
	r.tel = tel
	r.svc.clientOptions = append(r.svc.clientOptions, rpc.WithLogger(r.log))
	if r.f.trustDomain != "" {
		r.svc.clientOptions = append(r.svc.clientOptions, rpc.WithTrustDomain(r.f.trustDomain))
	}
	r.svc.clientOptions = append(r.svc.clientOptions, tel.ClientOptions()...)
	return nil
}

// admin listens on --admin-addr, if set, and serves there until after the
// drain: /metrics, and /healthz answering with the server's state.
func (r *runner) admin() error {
	if r.f.adminAddr == "" {
		return nil
	}
	opts := []telemetry.AdminOption{telemetry.WithHealth(r.svc.Server.Serving)}
	if r.f.adminAllowRemote {
		opts = append(opts, telemetry.WithRemoteAccess())
	}
	a, err := telemetry.ListenAdmin(r.svc.ctx, r.f.adminAddr, r.tel, opts...)
	if err != nil {
		return fmt.Errorf("--admin-addr: %w", err)
	}
	r.goLate("admin listener", a.Serve)
	return nil
}

// decisionLog starts the shipper of decision logs, with
// --decision-log-url, and returns its hook for the server's authorization
// (nil without the flag).
func (r *runner) decisionLog() (authz.DecisionHook, error) {
	if r.f.decisionLogURL == "" {
		return nil, nil
	}
	shipper, err := decisionlog.New(r.f.decisionLogURL, r.svc.Source,
		decisionlog.WithLogger(r.log),
		decisionlog.WithMeterProvider(r.tel.MeterProvider()),
		decisionlog.WithLabels(map[string]string{"service": r.cfg.name}),
		decisionlog.WithClientOptions(r.svc.ClientOptions()...))
	if err != nil {
		return nil, fmt.Errorf("--decision-log-url: %w", err)
	}
	r.goLate("decision log", shipper.Run)
	return shipper.Hook, nil
}
