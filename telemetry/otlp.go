package telemetry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/credentials"

	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// OTLPTracesPath is the path spans are POSTed to over OTLP/HTTP when the
// endpoint URL names none: the collector's default.
const OTLPTracesPath = "/v1/traces"

// otlpExportTimeout bounds one export, connection included.
const otlpExportTimeout = 10 * time.Second

// OTLPOption configures WithOTLP.
type OTLPOption interface {
	applyOTLP(*otlpConfig)
}

type otlpConfig struct {
	endpoint string
	src      mtls.Source
	http     bool
	serverID string
}

type otlpOptionFunc func(*otlpConfig)

func (f otlpOptionFunc) applyOTLP(c *otlpConfig) { f(c) }

// OTLPOverHTTP sends spans as OTLP/HTTP (protobuf, POSTed to the
// endpoint's path, OTLPTracesPath when it has none; a collector listens on
// 4318) instead of OTLP/gRPC (a collector listens on 4317). An endpoint
// with a path is OTLP/HTTP without it.
func OTLPOverHTTP() OTLPOption {
	return otlpOptionFunc(func(c *otlpConfig) { c.http = true })
}

// OTLPServerID accepts only a collector whose certificate carries the
// SPIFFE ID id, wherever it answers (as rpc.WithServerID does for a
// service). Without it the collector must be a workload of the source's
// trust domain whose certificate names the endpoint's host.
func OTLPServerID(id string) OTLPOption {
	return otlpOptionFunc(func(c *otlpConfig) { c.serverID = id })
}

// WithOTLP exports spans to an OpenTelemetry collector, beside the other
// exporters (WithTraceWriter, WithSpanExporter): in batches, in the
// background, so a call never waits for the collector; spans that do not
// fit the exporter's queue (2048 spans) while the collector is away are
// dropped. Shutdown sends what is queued.
//
// endpoint is the collector's URL, and must be https: spans name
// procedures and SPIFFE IDs and never travel in clear. Without a path it
// is OTLP/gRPC ("https://otel-collector:4317"); with one, OTLP/HTTP to
// that path ("https://otel-collector:4318/v1/traces", as
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is written), so that one setting
// (the kit's --otlp-endpoint) says both. Spans go over mutual TLS with
// src's certificate, the collector verified against src's trust bundle
// (see OTLPServerID). A bad endpoint is New's error.
func WithOTLP(endpoint string, src mtls.Source, opts ...OTLPOption) Option {
	return optionFunc(func(c *config) {
		oc := &otlpConfig{endpoint: endpoint, src: src}
		for _, o := range opts {
			o.applyOTLP(oc)
		}
		c.otlp = append(c.otlp, oc)
	})
}

// otlpExporter is a collector's exporter, checked and ready to be made.
type otlpExporter struct {
	url  string
	http bool
	tls  *tls.Config
}

// checkOTLP checks oc and returns what its exporter is made of.
func checkOTLP(oc *otlpConfig) (*otlpExporter, error) {
	u, err := url.Parse(oc.endpoint)
	switch {
	case err != nil:
		return nil, fmt.Errorf("endpoint: %w", err)
	case u.Scheme != "https":
		return nil, fmt.Errorf("endpoint %q: must be https (spans are sent over mutual TLS only)", u.Redacted())
	case u.Hostname() == "":
		return nil, fmt.Errorf("endpoint %q: no host", u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("endpoint %q: credentials in the URL (the collector authenticates the client certificate)", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("endpoint %q: a query or fragment", u.Redacted())
	case oc.src == nil:
		return nil, errors.New("no mtls.Source")
	}
	tlsConfig, err := otlpTLSConfig(oc, u.Hostname())
	if err != nil {
		return nil, err
	}
	overHTTP := oc.http || (u.Path != "" && u.Path != "/") // OTLP/gRPC has no path
	if overHTTP && (u.Path == "" || u.Path == "/") {
		u.Path = OTLPTracesPath
	}
	return &otlpExporter{url: u.String(), http: overHTTP, tls: tlsConfig}, nil
}

// otlpTLSConfig is the client side of mutual TLS with the collector: src's
// certificate, the collector checked by SPIFFE ID (OTLPServerID) or as a
// member of src's trust domain serving host.
func otlpTLSConfig(oc *otlpConfig, host string) (*tls.Config, error) {
	if oc.serverID != "" {
		id, err := spiffeid.Parse(oc.serverID)
		if err != nil {
			return nil, fmt.Errorf("collector ID: %w", err)
		}
		return mtls.ClientConfigForID(oc.src, id)
	}
	self, err := mtls.IdentityOf(oc.src)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(oc.src, host, mtls.AuthorizeMemberOf(self.TrustDomain()))
}

// make makes the exporter. It connects lazily: a collector that is down at
// start delays nothing.
func (e *otlpExporter) make() (*otlptrace.Exporter, error) {
	ctx := context.Background() // nothing is connected here; the exporter keeps no context
	if e.http {
		return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(e.url), otlptracehttp.WithTLSClientConfig(e.tls),
			otlptracehttp.WithCompression(otlptracehttp.GzipCompression), otlptracehttp.WithTimeout(otlpExportTimeout))
	}
	return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(e.url), otlptracegrpc.WithTLSCredentials(credentials.NewTLS(e.tls)),
		otlptracegrpc.WithCompressor("gzip"), otlptracegrpc.WithTimeout(otlpExportTimeout))
}

// otlpSpanProcessors returns a batching span processor per collector, or
// an error and none if one of cfgs is wrong.
func otlpSpanProcessors(cfgs []*otlpConfig) ([]sdktrace.TracerProviderOption, error) {
	checked := make([]*otlpExporter, 0, len(cfgs))
	for _, oc := range cfgs {
		e, err := checkOTLP(oc)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
		}
		checked = append(checked, e)
	}
	var exps []*otlptrace.Exporter
	for _, e := range checked {
		exp, err := e.make()
		if err != nil {
			for _, made := range exps {
				_ = made.Shutdown(context.Background())
			}
			return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
		}
		exps = append(exps, exp)
	}
	opts := make([]sdktrace.TracerProviderOption, 0, len(exps))
	for _, exp := range exps {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return opts, nil
}
