package rpc

import (
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// ServerOption configures a Server.
type ServerOption interface {
	applyServer(*serverConfig)
}

type serverConfig struct {
	trustDomain          string
	logger               *slog.Logger
	readMaxBytes         int
	maxHeaderBytes       int
	readHeaderTimeout    time.Duration
	idleTimeout          time.Duration
	shutdownGrace        time.Duration
	maxConcurrentStreams int
	compressMinBytes     int
	interceptors         []connect.Interceptor
	tokens               TokenVerifier
	authzOptions         []authz.InterceptorOption
	tracerProvider       trace.TracerProvider
	meterProvider        metric.MeterProvider
	pinned               []pinnedClient
	rateLimit            rateLimitConfig
	maxStreamMessages    int

	maxStreamBytes         int           // limits.go
	maxStreamsPerPrincipal int           // principalstreams.go
	bodyReadTimeout        time.Duration // limits.go
	maxConnAge             time.Duration // maxage.go
	maxConnAgeGrace        time.Duration // maxage.go

	now func() time.Time // expiry.go: the drain's clock; nil: time.Now
}

func defaultServerConfig() serverConfig {
	return serverConfig{
		logger:               slog.Default(),
		readMaxBytes:         DefaultReadMaxBytes,
		maxHeaderBytes:       DefaultMaxHeaderBytes,
		readHeaderTimeout:    DefaultReadHeaderTimeout,
		idleTimeout:          DefaultIdleTimeout,
		shutdownGrace:        DefaultShutdownGrace,
		maxConcurrentStreams: DefaultMaxConcurrentStreams,
		compressMinBytes:     DefaultCompressMinBytes,
		maxStreamMessages:    DefaultMaxStreamMessages,

		maxStreamBytes:         DefaultMaxStreamBytes,
		maxStreamsPerPrincipal: DefaultMaxStreamsPerPrincipal,
		bodyReadTimeout:        DefaultBodyReadTimeout,
	}
}

type serverOptionFunc func(*serverConfig)

func (f serverOptionFunc) applyServer(c *serverConfig) { f(c) }

// WithTrustDomain sets the trust domain of a server's callers, or of a
// client's servers. By default it is the trust domain of the workload's own
// certificate (the SPIFFE ID of the mtls.Source's certificate when the
// server or client is made). A server refuses a client certificate whose
// SPIFFE ID is in another trust domain with unauthenticated; a client
// without WithServerID refuses a server outside it in the handshake.
func WithTrustDomain(td string) Option {
	return sharedOption{
		server: func(c *serverConfig) { c.trustDomain = td },
		client: func(c *clientConfig) { c.trustDomain = td },
	}
}

// WithLogger sets the logger (default slog.Default()) of a server, or of a
// client, which logs only the connections it closes to a server whose
// certificate has expired or been revoked.
func WithLogger(l *slog.Logger) Option {
	return sharedOption{
		server: func(c *serverConfig) {
			if l != nil {
				c.logger = l
			}
		},
		client: func(c *clientConfig) {
			if l != nil {
				c.logger = l
			}
		},
	}
}

// WithReadMaxBytes caps the size of one request message after decompression
// (default 4 MiB), and so also its compressed size. Larger messages fail
// with resource_exhausted; a compressed one is not decompressed past the cap.
func WithReadMaxBytes(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.readMaxBytes = n })
}

// WithMaxHeaderBytes caps the size of request headers (default 64 KiB).
func WithMaxHeaderBytes(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxHeaderBytes = n })
}

// WithReadHeaderTimeout bounds how long a client may take to send request
// headers (default 5s), the defence against slow-loris clients. Over
// HTTP/2, where net/http has no such deadline, a client that stops in the
// middle of a header block (or of any frame) is cut off by PINGs instead:
// after half the timeout without a complete frame the server sends one,
// and closes the connection when the other half passes without an answer.
func WithReadHeaderTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.readHeaderTimeout = d })
}

// WithIdleTimeout closes keep-alive connections idle for longer (default 2m).
func WithIdleTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.idleTimeout = d })
}

// WithShutdownGrace sets how long in-flight calls may run once the server
// drains (default 10s).
func WithShutdownGrace(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.shutdownGrace = d })
}

// WithMaxConcurrentStreams caps concurrent HTTP/2 streams per connection (default 250).
func WithMaxConcurrentStreams(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxConcurrentStreams = n })
}

// WithCompressMinBytes sets the smallest reply the server compresses (default 4 KiB).
func WithCompressMinBytes(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.compressMinBytes = n })
}

// WithInterceptors adds interceptors to every mounted service. They run inside
// the security chain: after authentication, authorization and validation.
func WithInterceptors(interceptors ...connect.Interceptor) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.interceptors = append(c.interceptors, interceptors...) })
}

// WithAuthorizationOptions configures the authorization interceptor, for
// example with authz.WithPerMessage.
func WithAuthorizationOptions(opts ...authz.InterceptorOption) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.authzOptions = append(c.authzOptions, opts...) })
}

// WithTokenVerifier makes the server verify bearer tokens: a request with an
// Authorization header is refused with unauthenticated unless v verifies the
// token, and a verified token's user joins the Principal. Without a verifier
// the server refuses every request that carries a token.
func WithTokenVerifier(v TokenVerifier) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.tokens = v })
}

// Option configures servers and clients alike: it is both a ServerOption
// and a ClientOption.
type Option interface {
	ServerOption
	ClientOption
}

type sharedOption struct {
	server func(*serverConfig)
	client func(*clientConfig)
}

func (o sharedOption) applyServer(c *serverConfig) { o.server(c) }
func (o sharedOption) applyClient(c *clientConfig) { o.client(c) }

// WithTracerProvider traces every call with tp (OpenTelemetry, through
// connectrpc.com/otelconnect). A server makes a span per call it receives —
// a child of the caller's when the request carries a W3C traceparent — with
// the caller's identity, the authorization decisions and the request id as
// attributes (never a token); a request that authentication refuses gets a
// span too. A client makes a span per call and sends its context in the
// traceparent header, so a call a service makes while serving another joins
// that call's trace. Without this option (or WithMeterProvider) nothing is
// traced and the chain has no tracing cost.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return sharedOption{
		server: func(c *serverConfig) { c.tracerProvider = tp },
		client: func(c *clientConfig) { c.tracerProvider = tp },
	}
}

// WithMeterProvider records metrics with mp: otelconnect's call durations
// (rpc.server.call.duration, rpc.client.call.duration, by method and code)
// and, on a server, Palisade's own — authorization decisions by result,
// authentication failures by reason, token cache lookups by result, the
// policy revision in force, and the expiry time of the served certificate.
// Without it nothing is recorded.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return sharedOption{
		server: func(c *serverConfig) { c.meterProvider = mp },
		client: func(c *clientConfig) { c.meterProvider = mp },
	}
}

// resolveTrustDomain checks the trust domain *td that WithTrustDomain set,
// or, when none was, sets it to the trust domain of src's certificate.
func resolveTrustDomain(td *string, src mtls.Source) error {
	if *td != "" {
		return spiffeid.ValidateTrustDomain(*td)
	}
	id, err := mtls.IdentityOf(src)
	if err != nil {
		return fmt.Errorf("trust domain from the workload's certificate (or set one with WithTrustDomain): %w", err)
	}
	*td = id.TrustDomain()
	return nil
}
