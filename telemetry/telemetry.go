// Package telemetry sets up what a Palisade service needs to be observed:
// OpenTelemetry tracer and meter providers to hand to the rpc package
// (rpc.WithTracerProvider, rpc.WithMeterProvider), spans written to a
// writer as JSON lines (the stdout exporter, for development) or sent to
// an OpenTelemetry collector over OTLP and mutual TLS (WithOTLP), metrics
// exported in the Prometheus text format, and the admin listener that
// serves them.
//
// Both providers are off unless asked for: a service without
// WithTraceWriter, WithSpanExporter or WithOTLP gets a no-op tracer provider, and
// one without WithMetrics a no-op meter provider, so the RPC chain costs
// nothing extra.
//
// Metrics are exported through go.opentelemetry.io/otel/exporters/prometheus
// into a registry of their own (never prometheus's global one), so the
// otelconnect RPC histograms and Palisade's counters and gauges share one
// scrape and the exposition format, content negotiation and name escaping
// are the Prometheus client's.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/palisade-rpc/palisade/rpc"
)

// Option configures New.
type Option interface {
	apply(*config)
}

type config struct {
	traceWriter  io.Writer
	spanExporter sdktrace.SpanExporter
	otlp         []*otlpConfig
	metrics      bool
	logger       *slog.Logger
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithTraceWriter writes every finished span to w as one JSON object per
// line (the OpenTelemetry stdout exporter), as each span ends.
func WithTraceWriter(w io.Writer) Option {
	return optionFunc(func(c *config) { c.traceWriter = w })
}

// WithSpanExporter hands every span to exp, synchronously as each ends:
// for tests (tracetest.NewInMemoryExporter) and other exporters.
func WithSpanExporter(exp sdktrace.SpanExporter) Option {
	return optionFunc(func(c *config) { c.spanExporter = exp })
}

// WithMetrics turns on the metrics pipeline; MetricsHandler (and the admin
// listener) serves it.
func WithMetrics() Option {
	return optionFunc(func(c *config) { c.metrics = true })
}

// WithLogger sets the logger (default slog.Default()) of the admin
// listener.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l != nil {
			c.logger = l
		}
	})
}

// Telemetry holds a service's providers. Shutdown flushes and stops them.
type Telemetry struct {
	logger         *slog.Logger
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	shutdown       []func(context.Context) error
	registry       *prometheus.Registry
}

// New builds the providers opts asks for, for the service named service
// (the service.name resource attribute of every span and the target_info
// metric: "usersvc").
func New(service string, opts ...Option) (*Telemetry, error) {
	cfg := config{logger: slog.Default()}
	for _, o := range opts {
		o.apply(&cfg)
	}
	res := resource.NewSchemaless(semconv.ServiceName(service))
	t := &Telemetry{logger: cfg.logger, tracerProvider: tracenoop.NewTracerProvider(), meterProvider: metricnoop.NewMeterProvider()}
	var spanOpts []sdktrace.TracerProviderOption
	if cfg.traceWriter != nil {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(cfg.traceWriter))
		if err != nil {
			return nil, fmt.Errorf("telemetry: stdout trace exporter: %w", err)
		}
		// Synchronous: a span is written when it ends, so a person (or the
		// demo) reading the output sees a call's spans as soon as it returns.
		// This is a development exporter; a fleet batches to a collector
		// (WithOTLP).
		spanOpts = append(spanOpts, sdktrace.WithSyncer(exp))
	}
	if cfg.spanExporter != nil {
		spanOpts = append(spanOpts, sdktrace.WithSyncer(cfg.spanExporter))
	}
	otlpOpts, err := otlpSpanProcessors(cfg.otlp)
	if err != nil {
		return nil, err
	}
	spanOpts = append(spanOpts, otlpOpts...)
	if len(spanOpts) > 0 {
		tp := sdktrace.NewTracerProvider(append(spanOpts, sdktrace.WithResource(res))...)
		t.tracerProvider = tp
		t.shutdown = append(t.shutdown, tp.Shutdown)
	}
	if cfg.metrics {
		t.registry = prometheus.NewRegistry()
		exp, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithoutScopeInfo())
		if err != nil {
			_ = t.Shutdown(context.Background()) // the tracer provider's exporters
			return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
		t.meterProvider = mp
		t.shutdown = append(t.shutdown, mp.Shutdown)
	}
	return t, nil
}

// TracerProvider returns the tracer provider: a no-op one unless spans go
// somewhere.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tracerProvider }

// MeterProvider returns the meter provider: a no-op one unless
// WithMetrics.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.meterProvider }

// MetricsHandler serves the metrics in the Prometheus text format (or
// OpenMetrics, when the scraper asks for it). Without WithMetrics it
// answers 404.
func (t *Telemetry) MetricsHandler() http.Handler {
	if t.registry == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown exports what is buffered and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		if err := f(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}

// ServerOptions returns the rpc options that make a server report to t.
func (t *Telemetry) ServerOptions() []rpc.ServerOption {
	return []rpc.ServerOption{rpc.WithTracerProvider(t.tracerProvider), rpc.WithMeterProvider(t.meterProvider)}
}

// ClientOptions returns the rpc options that make a client report to t.
func (t *Telemetry) ClientOptions() []rpc.ClientOption {
	return []rpc.ClientOption{rpc.WithTracerProvider(t.tracerProvider), rpc.WithMeterProvider(t.meterProvider)}
}
