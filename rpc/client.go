package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// DefaultCallTimeout bounds every unary call a client makes.
const DefaultCallTimeout = 10 * time.Second

// Protocol selects the wire protocol a client speaks.
type Protocol int

const (
	// ProtocolConnect is the Connect protocol (the default).
	ProtocolConnect Protocol = iota
	// ProtocolGRPC is gRPC over HTTP/2.
	ProtocolGRPC
	// ProtocolGRPCWeb is gRPC-Web.
	ProtocolGRPCWeb
)

// ClientOption configures NewClient and NewHTTPClient.
type ClientOption interface {
	applyClient(*clientConfig)
}

type clientConfig struct {
	trustDomain    string
	serverID       string
	callTimeout    time.Duration
	dialTimeout    time.Duration
	protocol       Protocol
	connectOptions []connect.ClientOption
	tokenSource    TokenSource
	httpClient     *http.Client
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	logger         *slog.Logger
}

// TokenSource returns the bearer token to send with a call made in ctx, or
// "" to send none.
type TokenSource func(ctx context.Context) (string, error)

// WithTokenSource makes the client send the token src returns as
// "Authorization: Bearer …" on every call, unary and streaming. If src fails
// the call fails with unauthenticated and is not sent. A service acting for
// the user of the call it serves passes (*token.Delegator).Token.
func WithTokenSource(src TokenSource) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.tokenSource = src })
}

type clientOptionFunc func(*clientConfig)

func (f clientOptionFunc) applyClient(c *clientConfig) { f(c) }

// WithServerID makes the client accept only a server whose certificate
// carries this SPIFFE ID. Without it, any server of the trust domain is
// accepted (after the usual chain and host name verification).
func WithServerID(id string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.serverID = id })
}

// WithClientTrustDomain sets the trust domain servers must belong to
// (default "palisade.local").
func WithClientTrustDomain(td string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.trustDomain = td })
}

// WithCallTimeout bounds every unary call: its deadline is the earlier of
// its context's and now+d (default 10s; 0 adds none). Streams are not given
// one: they are long-lived by design.
func WithCallTimeout(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.callTimeout = d })
}

// WithDialTimeout bounds TCP connect plus TLS handshake (default 5s).
func WithDialTimeout(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.dialTimeout = d })
}

// WithProtocol selects the wire protocol (default ProtocolConnect).
func WithProtocol(p Protocol) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.protocol = p })
}

// WithHTTPClient makes NewClient call through c, an HTTP client that
// NewHTTPClient returned, instead of making its own. Clients of one upstream
// service then share its connections, so calls made one after the other go
// over the same connection while it lasts: a token exchanged over it is bound
// to the certificate the next call presents. The connection settings
// (WithServerID, WithClientTrustDomain, WithDialTimeout) are those c was
// made with. NewHTTPClient refuses this option.
func WithHTTPClient(c *http.Client) ClientOption {
	return clientOptionFunc(func(cfg *clientConfig) { cfg.httpClient = c })
}

// WithConnectOptions passes options to the generated client's constructor.
func WithConnectOptions(opts ...connect.ClientOption) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.connectOptions = append(c.connectOptions, opts...) })
}

func newClientConfig(opts []ClientOption) (clientConfig, error) {
	cfg := clientConfig{trustDomain: DefaultTrustDomain, callTimeout: DefaultCallTimeout, dialTimeout: 5 * time.Second, logger: slog.Default()}
	for _, o := range opts {
		o.applyClient(&cfg)
	}
	if err := spiffeid.ValidateTrustDomain(cfg.trustDomain); err != nil {
		return cfg, fmt.Errorf("rpc: client: %w", err)
	}
	return cfg, nil
}

// NewClient returns a generated Connect client (newClient is the generated
// constructor, for example userv1connect.NewUserServiceClient) that calls
// baseURL ("https://host:port") over HTTP/2 with mTLS: the client
// certificate and trust bundle come from src.
func NewClient[T any](newClient func(connect.HTTPClient, string, ...connect.ClientOption) T, baseURL string, src mtls.Source, opts ...ClientOption) (T, error) {
	var zero T
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return zero, fmt.Errorf("rpc: client: base URL %q must be https://host:port", baseURL)
	}
	cfg, err := newClientConfig(opts)
	if err != nil {
		return zero, err
	}
	httpClient := cfg.httpClient
	if httpClient == nil {
		if httpClient, err = newHTTPClient(src, cfg); err != nil {
			return zero, err
		}
	}
	var interceptors []connect.Interceptor
	if _, _, otel, err := newOtelconnect(cfg.tracerProvider, cfg.meterProvider); err != nil {
		return zero, err
	} else if otel != nil {
		interceptors = append(interceptors, otel)
	}
	interceptors = append(interceptors, forwardRequestID{}, callTimeout(cfg.callTimeout))
	if cfg.tokenSource != nil {
		interceptors = append(interceptors, bearerInterceptor(cfg.tokenSource))
	}
	interceptors = append(interceptors, brokenConnUnavailable{})
	connectOpts := []connect.ClientOption{connect.WithInterceptors(interceptors...)}
	switch cfg.protocol {
	case ProtocolGRPC:
		connectOpts = append(connectOpts, connect.WithGRPC())
	case ProtocolGRPCWeb:
		connectOpts = append(connectOpts, connect.WithGRPCWeb())
	}
	return newClient(httpClient, baseURL, append(connectOpts, cfg.connectOptions...)...), nil
}

// NewHTTPClient returns the HTTP client NewClient uses: HTTP/2 only, over
// TLS 1.3 with the client certificate from src, verifying servers against
// src's trust bundle (read on every new connection, so rotation applies).
func NewHTTPClient(src mtls.Source, opts ...ClientOption) (*http.Client, error) {
	cfg, err := newClientConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.httpClient != nil {
		return nil, errors.New("rpc: NewHTTPClient: WithHTTPClient is an option of NewClient")
	}
	return newHTTPClient(src, cfg)
}

func newHTTPClient(src mtls.Source, cfg clientConfig) (*http.Client, error) {
	if src == nil {
		return nil, errors.New("rpc: client needs an mtls.Source")
	}
	authorize := mtls.AuthorizeMemberOf(cfg.trustDomain)
	if cfg.serverID != "" {
		id, err := spiffeid.Parse(cfg.serverID)
		if err != nil {
			return nil, fmt.Errorf("rpc: client: server ID: %w", err)
		}
		authorize = mtls.AuthorizeID(id)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP2(true)
	netDialer := &net.Dialer{Timeout: cfg.dialTimeout, KeepAlive: 30 * time.Second}
	guard := newServerGuard(src, cfg.logger)
	transport := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			tlsConfig, err := mtls.ClientConfig(src, host, authorize, "h2")
			if err != nil {
				return nil, err
			}
			return guard.dial(ctx, netDialer, network, addr, tlsConfig)
		},
		Protocols:         protocols,
		ForceAttemptHTTP2: true,
		IdleConnTimeout:   90 * time.Second,
		HTTP2: &http.HTTP2Config{
			// Ping a connection that has been silent this long, and drop it if the
			// ping is not answered, so calls do not hang on a dead peer.
			SendPingTimeout: 15 * time.Second,
			PingTimeout:     5 * time.Second,
		},
	}
	return &http.Client{Transport: transport}, nil
}

// forwardRequestID sends the request id of the call being served (in ctx)
// with outgoing calls, unless the caller set one.
type forwardRequestID struct{}

func (forwardRequestID) set(ctx context.Context, h http.Header) {
	if id, ok := RequestIDFromContext(ctx); ok && h.Get(RequestIDHeader) == "" {
		h.Set(RequestIDHeader, id)
	}
}

func (f forwardRequestID) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			f.set(ctx, req.Header())
		}
		return next(ctx, req)
	}
}

func (f forwardRequestID) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		f.set(ctx, conn.RequestHeader())
		return conn
	}
}

func (forwardRequestID) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// callTimeout bounds unary calls by the configured timeout.
type callTimeout time.Duration

func (d callTimeout) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(d))
			defer cancel()
		}
		return next(ctx, req)
	}
}

func (d callTimeout) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (d callTimeout) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// bearerInterceptor adds the token from a TokenSource to outgoing calls.
type bearerInterceptor TokenSource

func (b bearerInterceptor) token(ctx context.Context, header http.Header) error {
	tok, err := b(ctx)
	if err != nil {
		return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("obtain a token for the call: %w", err))
	}
	if tok != "" {
		header.Set("Authorization", "Bearer "+tok)
	}
	return nil
}

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := b.token(ctx, req.Header()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if err := b.token(ctx, conn.RequestHeader()); err != nil {
			return &failedConn{StreamingClientConn: conn, err: err}
		}
		return conn
	}
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// failedConn is a client stream that fails every operation with err.
type failedConn struct {
	connect.StreamingClientConn
	err error
}

func (c *failedConn) Send(any) error       { return c.err }
func (c *failedConn) Receive(any) error    { return c.err }
func (c *failedConn) CloseRequest() error  { return c.StreamingClientConn.CloseRequest() }
func (c *failedConn) CloseResponse() error { return c.StreamingClientConn.CloseResponse() }
