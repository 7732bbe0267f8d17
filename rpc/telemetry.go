package rpc

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// instrumentationName names the tracer and meter of Palisade's own
// telemetry (the RPC spans and durations are otelconnect's).
const instrumentationName = "github.com/palisade-rpc/palisade/rpc"

// Span attributes Palisade sets on a call's server span, beside
// otelconnect's rpc.* attributes. Never a token.
const (
	AttrRequestID      = "palisade.request_id"            // the call's request id
	AttrPeer           = "palisade.peer"                  // the caller's SPIFFE ID
	AttrAuthnResult    = "palisade.authn.result"          // "workload", "user" or "refused"
	AttrAuthnReason    = "palisade.authn.reason"          // why a request was refused
	AttrSubject        = string(semconv.EnduserIDKey)     // the user (token sub)
	AttrActor          = "palisade.authn.actor"           // the workload acting for the user
	AttrCertBound      = "palisade.authn.cert_bound"      // the token is bound to the caller's certificate
	AttrDecisionID     = "palisade.authz.decision_id"     // the call-level (or per-message) decision
	AttrDecisionResult = "palisade.authz.result"          // "allow", "deny" or "error"
	AttrDecisionReason = "palisade.authz.reasons"         // the reasons the policy gave
	AttrPolicyRevision = "palisade.authz.policy_revision" // the policy that decided
	// AttrResourcePrefix prefixes the same decision attributes for a
	// resource-level decision (authz.AuthorizeResource): "palisade.authz.resource.decision_id", ….
	AttrResourcePrefix = "palisade.authz.resource."
)

// Results of an authorization decision, as counted and recorded.
const (
	decisionAllow = "allow"
	decisionDeny  = "deny"
	decisionError = "error"
)

// traceContext is the propagator of every server and client: W3C
// traceparent/tracestate, set explicitly rather than read from the otel
// globals.
var traceContext propagation.TextMapPropagator = propagation.TraceContext{}

// serverTelemetry is a server's tracing and metrics: otelconnect for the
// RPC spans and durations (only when a provider was given, so a server
// without one pays nothing per call), and Palisade's own instruments.
type serverTelemetry struct {
	tracer        trace.Tracer
	otel          *otelconnect.Interceptor // nil without providers
	decisions     metric.Int64Counter
	authnFailures metric.Int64Counter
	byResult      map[string][]metric.AddOption // one slice per result: Add(…, opts...) does not allocate
	registration  metric.Registration
}

func newServerTelemetry(cfg *serverConfig, src mtls.Source, authorizer authz.Authorizer) (*serverTelemetry, error) {
	t := &serverTelemetry{byResult: map[string][]metric.AddOption{}}
	// Incoming trace context is trusted: every caller has passed the mTLS
	// handshake with a certificate of the trust domain before the RPC layer
	// runs, so a service's call to another is one trace.
	tp, mp, otel, err := newOtelconnect(cfg.tracerProvider, cfg.meterProvider, otelconnect.WithTrustRemote())
	if err != nil {
		return nil, err
	}
	t.otel = otel
	t.tracer = tp.Tracer(instrumentationName)
	meter := mp.Meter(instrumentationName)
	if t.decisions, err = meter.Int64Counter("palisade.authz.decisions",
		metric.WithDescription("Authorization decisions, by result: allow, deny, or error (the policy could not decide; denied)."),
		metric.WithUnit("{decision}")); err != nil {
		return nil, fmt.Errorf("rpc: metrics: %w", err)
	}
	for _, r := range []string{decisionAllow, decisionDeny, decisionError} {
		t.byResult[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", r)))}
	}
	if t.authnFailures, err = meter.Int64Counter("palisade.authn.failures",
		metric.WithDescription("Requests refused by authentication, by reason (token failures by the verifier's reason)."),
		metric.WithUnit("{request}")); err != nil {
		return nil, fmt.Errorf("rpc: metrics: %w", err)
	}
	if t.registration, err = registerObservers(meter, src, authorizer, cfg.tokens); err != nil {
		return nil, fmt.Errorf("rpc: metrics: %w", err)
	}
	return t, nil
}

// newOtelconnect returns the providers to use — no-op ones for those not
// given — and an otelconnect interceptor, or nil when neither provider was
// given (or both are no-ops): without telemetry the chain does no
// telemetry work.
func newOtelconnect(tp trace.TracerProvider, mp metric.MeterProvider, opts ...otelconnect.Option) (trace.TracerProvider, metric.MeterProvider, *otelconnect.Interceptor, error) {
	if _, ok := tp.(tracenoop.TracerProvider); ok {
		tp = nil
	}
	if _, ok := mp.(metricnoop.MeterProvider); ok {
		mp = nil
	}
	if tp == nil && mp == nil {
		return tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider(), nil, nil
	}
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	otel, err := otelconnect.NewInterceptor(append([]otelconnect.Option{otelconnect.WithTracerProvider(tp),
		otelconnect.WithMeterProvider(mp), otelconnect.WithPropagator(traceContext)}, opts...)...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("rpc: otelconnect: %w", err)
	}
	return tp, mp, otel, nil
}

// cacheStats is what the token cache metric reads; *token.Verifier has it.
type cacheStats interface {
	CacheStats() (hits, misses uint64)
}

// revisioner is what the policy revision metric reads; *policy.Engine has it.
type revisioner interface {
	Revision() string
}

// registerObservers registers the gauges and counters read at collection
// time: the served certificate's expiry, and — when the verifier and the
// authorizer can tell — the token cache's hits and misses and the policy
// revision.
func registerObservers(meter metric.Meter, src mtls.Source, authorizer authz.Authorizer, tokens TokenVerifier) (metric.Registration, error) {
	expiry, err := meter.Int64ObservableGauge("palisade.certificate.expiry_timestamp",
		metric.WithDescription("When the certificate this server presents expires, in seconds since the Unix epoch."),
		metric.WithUnit("s"))
	if err != nil {
		return nil, err
	}
	instruments := []metric.Observable{expiry}
	var lookups metric.Int64ObservableCounter
	stats, hasStats := tokens.(cacheStats)
	if hasStats {
		if lookups, err = meter.Int64ObservableCounter("palisade.token.cache.lookups",
			metric.WithDescription("Bearer tokens looked up in the cache of verified tokens, by result: hit, or miss (verified in full)."),
			metric.WithUnit("{lookup}")); err != nil {
			return nil, err
		}
		instruments = append(instruments, lookups)
	}
	var revision metric.Int64ObservableGauge
	rev, hasRevision := authorizer.(revisioner)
	if hasRevision {
		if revision, err = meter.Int64ObservableGauge("palisade.policy.revision_info",
			metric.WithDescription("The policy in force: always 1, with its revision as a label.")); err != nil {
			return nil, err
		}
		instruments = append(instruments, revision)
	}
	hit := metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "hit")))
	miss := metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "miss")))
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if leaf := servedLeaf(src); leaf != nil {
			id := ""
			if len(leaf.URIs) == 1 {
				id = leaf.URIs[0].String()
			}
			o.ObserveInt64(expiry, leaf.NotAfter.Unix(), metric.WithAttributes(attribute.String("spiffe_id", id)))
		}
		if hasStats {
			h, m := stats.CacheStats()
			o.ObserveInt64(lookups, int64(h), hit)
			o.ObserveInt64(lookups, int64(m), miss)
		}
		if hasRevision {
			o.ObserveInt64(revision, 1, metric.WithAttributes(attribute.String("revision", rev.Revision())))
		}
		return nil
	}, instruments...)
}

// servedLeaf returns the certificate src currently serves, or nil.
func servedLeaf(src mtls.Source) *x509.Certificate {
	cert, err := src.Certificate()
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return nil
	}
	if cert.Leaf != nil {
		return cert.Leaf
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// close stops the observers; instruments of a closed server report nothing.
func (t *serverTelemetry) close() {
	if t.registration != nil {
		_ = t.registration.Unregister()
	}
}

// annotateCaller puts the authenticated caller on the call's span.
func (t *serverTelemetry) annotateCaller(ctx context.Context) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 6)
	if id, ok := RequestIDFromContext(ctx); ok {
		attrs = append(attrs, attribute.String(AttrRequestID, id))
	}
	if p, ok := security.FromContext(ctx); ok {
		attrs = append(attrs, attribute.String(AttrPeer, p.Workload.ID.String()))
		if u := p.User; u != nil {
			attrs = append(attrs, attribute.String(AttrAuthnResult, "user"), attribute.String(AttrSubject, u.Subject),
				attribute.Bool(AttrCertBound, u.CertBound))
			if u.Actor != "" {
				attrs = append(attrs, attribute.String(AttrActor, u.Actor))
			}
		} else {
			attrs = append(attrs, attribute.String(AttrAuthnResult, "workload"))
		}
	}
	span.SetAttributes(attrs...)
}

// decided is the authorization interceptor's DecisionHook: it counts the
// decision and records it on the call's span.
func (t *serverTelemetry) decided(ctx context.Context, in *authz.Input, d authz.Decision, evalErr error) {
	result := decisionDeny
	switch {
	case evalErr != nil:
		result = decisionError
	case d.Allow:
		result = decisionAllow
	}
	t.decisions.Add(ctx, 1, t.byResult[result]...)
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		// A decision the request gate took, before the call's span exists
		// (a denial: an allow is logged and told again under the span): kept
		// for the span gated makes.
		if rec := recordOf(ctx); t.otel != nil && rec != nil && in.Resource == nil {
			rec.decision = &decisionNote{id: in.DecisionID, result: result, reasons: d.Reasons, revision: d.Revision}
		}
		return
	}
	decisionNote{id: in.DecisionID, result: result, reasons: d.Reasons, revision: d.Revision}.record(span, in.Resource != nil)
}

// decisionNote is a decision as a span records it.
type decisionNote struct {
	id, result, revision string
	reasons              []string
}

// record puts the decision on span, under the resource-level attribute
// names when resource is set.
func (n decisionNote) record(span trace.Span, resource bool) {
	key := func(k string) string { return k }
	if resource {
		key = func(k string) string { return AttrResourcePrefix + strings.TrimPrefix(k, "palisade.authz.") }
	}
	span.SetAttributes(
		attribute.String(key(AttrDecisionID), n.id),
		attribute.String(key(AttrDecisionResult), n.result),
		attribute.StringSlice(key(AttrDecisionReason), n.reasons),
		attribute.String(key(AttrPolicyRevision), n.revision),
	)
}

// gated gives a call the request gate refused (over its rate limit, or
// denied before its body was read) the server span otelconnect, which never
// sees it, would have made: the caller, the request id, the decision, the
// code.
func (t *serverTelemetry) gated(ctx context.Context, spec connect.Spec, header http.Header, err error) {
	if t.otel == nil {
		return
	}
	ctx = traceContext.Extract(ctx, propagation.HeaderCarrier(header))
	name := strings.TrimPrefix(spec.Procedure, "/")
	code := strings.ToUpper(connect.CodeOf(err).String())
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		semconv.RPCMethodKey.String(name),
		semconv.RPCResponseStatusCodeKey.String(code),
		semconv.ErrorTypeKey.String(code),
	))
	defer span.End()
	t.annotateCaller(ctx)
	if rec := recordOf(ctx); rec != nil && rec.decision != nil {
		rec.decision.record(span, false)
	}
}

// refused counts a request authenticate refused and, when tracing, gives it
// a span of its own — the RPC layer, where otelconnect makes spans, never
// sees it.
func (t *serverTelemetry) refused(ctx context.Context, r *http.Request, reason string) {
	t.authnFailures.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	if t.otel == nil {
		return
	}
	ctx = traceContext.Extract(ctx, propagation.HeaderCarrier(r.Header))
	name := strings.TrimPrefix(r.URL.Path, "/")
	if len(name) > maxLoggedPath {
		name = name[:maxLoggedPath]
	}
	attrs := []attribute.KeyValue{
		semconv.RPCMethodKey.String(name),
		// Upper case, as otelconnect writes gRPC's canonical names.
		semconv.RPCResponseStatusCodeKey.String(strings.ToUpper(connect.CodeUnauthenticated.String())),
		semconv.ErrorTypeKey.String(strings.ToUpper(connect.CodeUnauthenticated.String())),
		attribute.String(AttrAuthnResult, "refused"),
		attribute.String(AttrAuthnReason, reason),
	}
	if id, ok := RequestIDFromContext(ctx); ok {
		attrs = append(attrs, attribute.String(AttrRequestID, id))
	}
	if rec := recordOf(ctx); rec != nil && rec.workload != nil {
		attrs = append(attrs, attribute.String(AttrPeer, rec.workload.ID.String()))
	}
	_, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	span.End()
}

// interceptors returns the server's telemetry interceptors, outermost
// first: otelconnect (when configured), then the recorder.
func (t *serverTelemetry) interceptors() []connect.Interceptor {
	if t.otel == nil {
		return []connect.Interceptor{recorder{tel: t}}
	}
	return []connect.Interceptor{t.otel, recorder{tel: t}}
}
