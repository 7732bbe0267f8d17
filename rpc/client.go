package rpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
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
	delegation     *delegation // delegation.go
	httpClient     *http.Client
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	logger         *slog.Logger

	endpoints  []string      // balance.go
	dnsRefresh time.Duration // balance.go; 0: names are not resolved by the client
	// Set by tests only (export_test.go).
	now    func() time.Time
	lookup func(ctx context.Context, hostport string) ([]string, error)
}

// TokenSource returns the bearer token to send with a call made in ctx, or
// "" to send none.
type TokenSource func(ctx context.Context) (string, error)

// WithTokenSource makes the client send the token src returns as
// "Authorization: Bearer …" on every call, unary and streaming. If src fails
// the call fails with unauthenticated and is not sent. A service acting for
// the user of the call it serves uses WithDelegation instead.
func WithTokenSource(src TokenSource) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.tokenSource = src })
}

type clientOptionFunc func(*clientConfig)

func (f clientOptionFunc) applyClient(c *clientConfig) { f(c) }

// WithServerID makes the client accept only a server whose certificate
// carries this SPIFFE ID, and check the server by that ID instead of the
// host name: its certificate must verify against the trust bundle but need
// not name the host or address dialed (SPIRE's X509-SVIDs carry only the
// SPIFFE ID; see mtls.ClientConfigForID). Without it, any server of the
// trust domain is accepted, after the usual chain and host name
// verification.
func WithServerID(id string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.serverID = id })
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
// (WithServerID, WithTrustDomain, WithDialTimeout, WithEndpoints,
// WithDNSEndpoints) are those c was made with; if c has endpoints, baseURL
// must be one of them. NewHTTPClient refuses this option.
func WithHTTPClient(c *http.Client) ClientOption {
	return clientOptionFunc(func(cfg *clientConfig) { cfg.httpClient = c })
}

// WithEndpoints makes the client spread its calls over several servers of
// one service — replicas, each presenting the SPIFFE ID that WithServerID
// requires — each given as a base URL like NewClient's, which is one of
// them: NewClient(f, "https://a:8443", src, WithEndpoints("https://b:8443"))
// calls a and b. Each endpoint is dialed and verified as a client of that
// one URL would be (mTLS, the SPIFFE ID; without WithServerID, the host
// name of its URL), with its own pool of HTTP/2 connections.
//
// A call goes to the less busy of two endpoints drawn at random (power of
// two choices on the unary calls in flight). An endpoint whose dial or
// handshake fails, or whose connection breaks, is ejected for 1s, doubling
// on each failure in a row up to 30s, then probed in the background (a
// dial and a handshake) and taken back when the probe succeeds; while every
// endpoint is ejected, a call tries the one whose ejection ends first rather
// than fail without trying. A call is tried again on another endpoint, at
// most 3 times in all and within its deadline, when its request never left
// (the dial or handshake failed), or when it got no response and its
// procedure is idempotent (idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT
// in its .proto). Other calls — CreateOrder, ExchangeToken — are never
// repeated once their request may have been sent, nor is a call whose
// response had begun, a client or bidi stream, or one the server answered
// with an error. A server stream that breaks is not resumed: its caller
// opens it again, and the balancer sends it elsewhere.
//
// Given to NewHTTPClient, the URLs are the endpoints; requests for their
// hosts are spread over all of them, requests for other hosts go to those
// hosts. With WithHTTPClient, give the endpoints to NewHTTPClient instead.
func WithEndpoints(urls ...string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.endpoints = append(c.endpoints, urls...) })
}

// WithDNSEndpoints makes the client resolve the host name of each endpoint
// (the base URL, and those of WithEndpoints) itself, to all its addresses
// (A and AAAA records), and spread its calls over them as over endpoints
// (see WithEndpoints), resolving the names again every refresh
// (DefaultDNSRefresh if refresh is 0 or less), and at most once a second
// while every address is ejected, in the background. Each address is
// verified as the URL alone would be: without WithServerID, the
// certificate must be valid for the name, not the address. A lookup that
// fails or finds nothing keeps the addresses the name had; until the first
// one succeeds, calls fail with unavailable. For a name with several
// addresses, such as a Kubernetes headless service.
func WithDNSEndpoints(refresh time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) {
		if refresh <= 0 {
			refresh = DefaultDNSRefresh
		}
		c.dnsRefresh = refresh
	})
}

// WithConnectOptions passes options to the generated client's constructor.
func WithConnectOptions(opts ...connect.ClientOption) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.connectOptions = append(c.connectOptions, opts...) })
}

func newClientConfig(opts []ClientOption) (clientConfig, error) {
	cfg := clientConfig{callTimeout: DefaultCallTimeout, dialTimeout: 5 * time.Second, logger: slog.Default()}
	for _, o := range opts {
		o.applyClient(&cfg)
	}
	if cfg.trustDomain != "" {
		if err := spiffeid.ValidateTrustDomain(cfg.trustDomain); err != nil {
			return cfg, fmt.Errorf("rpc: client: %w", err)
		}
	}
	return cfg, nil
}

// NewClient returns a generated Connect client (newClient is the generated
// constructor, for example userv1connect.NewUserServiceClient) that calls
// baseURL ("https://host:port") over HTTP/2 with mTLS: the client
// certificate and trust bundle come from src. With WithEndpoints or
// WithDNSEndpoints it spreads its calls over several servers, baseURL's
// among them.
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
	balanced := len(cfg.endpoints) > 0 || cfg.dnsRefresh > 0
	httpClient := cfg.httpClient
	if httpClient == nil {
		if balanced {
			cfg.endpoints = append([]string{baseURL}, cfg.endpoints...)
		}
		if httpClient, err = newHTTPClient(src, cfg); err != nil {
			return zero, err
		}
	} else if balanced {
		return zero, errors.New("rpc: client: WithEndpoints and WithDNSEndpoints go to NewHTTPClient when the client is given WithHTTPClient")
	} else if b, ok := httpClient.Transport.(*balancer); ok {
		if !b.hosts[u.Host] {
			return zero, fmt.Errorf("rpc: client: base URL %q is not one of the HTTP client's endpoints", baseURL)
		}
		balanced = true
	}
	var interceptors []connect.Interceptor
	if _, _, otel, err := newOtelconnect(cfg.tracerProvider, cfg.meterProvider); err != nil {
		return zero, err
	} else if otel != nil {
		interceptors = append(interceptors, otel)
	}
	interceptors = append(interceptors, forwardRequestID{}, callTimeout(cfg.callTimeout))
	// Those after the token's: the exchange's too (delegation.go).
	tail := []connect.Interceptor{brokenConnUnavailable{}}
	if balanced {
		tail = append(tail, markCalls{})
	}
	switch {
	case cfg.tokenSource != nil && cfg.delegation != nil:
		return zero, errors.New("rpc: client: WithTokenSource and WithDelegation exclude each other")
	case cfg.tokenSource != nil:
		interceptors = append(interceptors, bearerInterceptor(cfg.tokenSource))
	case cfg.delegation != nil:
		var hosts map[string]bool
		if b, ok := httpClient.Transport.(*balancer); ok {
			hosts = b.hosts
		}
		d, err := newDelegatingInterceptor(cfg.delegation, cfg, u, httpClient, hosts, append(slices.Clone(interceptors), tail...))
		if err != nil {
			return zero, err
		}
		interceptors = append(interceptors, d)
	}
	interceptors = append(interceptors, tail...)
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
// With WithEndpoints it spreads the requests for the endpoints' hosts over
// them (see WithEndpoints); its CloseIdleConnections then also waits for
// the probes and DNS lookups it runs in the background, which end within
// the dial timeout.
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
	var (
		serverID  spiffeid.ID
		authorize mtls.Authorizer // without a server ID
	)
	if cfg.serverID != "" {
		id, err := spiffeid.Parse(cfg.serverID)
		if err != nil {
			return nil, fmt.Errorf("rpc: client: server ID: %w", err)
		}
		serverID = id
	} else {
		if err := resolveTrustDomain(&cfg.trustDomain, src); err != nil {
			return nil, fmt.Errorf("rpc: client: %w", err)
		}
		authorize = mtls.AuthorizeMemberOf(cfg.trustDomain)
	}
	d := &tlsDialer{
		src:       src,
		authorize: authorize,
		serverID:  serverID,
		net:       &net.Dialer{Timeout: cfg.dialTimeout, KeepAlive: 30 * time.Second},
		guard:     newServerGuard(src, cfg.logger),
	}
	if len(cfg.endpoints) == 0 {
		if cfg.dnsRefresh > 0 {
			return nil, errors.New("rpc: NewHTTPClient: WithDNSEndpoints resolves the hosts of WithEndpoints, and there are none")
		}
		return &http.Client{Transport: d.transport(nil)}, nil
	}
	targets, err := parseTargets(cfg.endpoints)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: newBalancer(d, targets, cfg)}, nil
}

// tlsDialer makes a client's connections: TCP, then the TLS handshake with
// the client certificate of src, verifying the server's chain for its host
// name and its SPIFFE ID with authorize; guard watches them until they
// close.
type tlsDialer struct {
	src       mtls.Source
	authorize mtls.Authorizer // without a serverID
	serverID  spiffeid.ID     // WithServerID's: checked instead of the host name
	net       *net.Dialer
	guard     *serverGuard
}

// dial connects to addr and verifies the server for serverName. presented,
// if not nil, is told the client certificate the handshake sent.
func (d *tlsDialer) dial(ctx context.Context, network, addr, serverName string, presented func(*tls.Certificate)) (net.Conn, error) {
	tlsConfig, err := d.tlsConfig(serverName)
	if err != nil {
		return nil, err
	}
	if presented != nil {
		get := tlsConfig.GetClientCertificate
		tlsConfig.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := get(cri)
			if err == nil {
				presented(c)
			}
			return c, err
		}
	}
	return d.guard.dial(ctx, d.net, network, addr, tlsConfig)
}

// tlsConfig verifies the server by WithServerID's SPIFFE ID if there is
// one (serverName is then sent as SNI only), or else for serverName and
// the trust domain.
func (d *tlsDialer) tlsConfig(serverName string) (*tls.Config, error) {
	if d.serverID.IsZero() {
		return mtls.ClientConfig(d.src, serverName, d.authorize, "h2")
	}
	cfg, err := mtls.ClientConfigForID(d.src, d.serverID, "h2")
	if err != nil {
		return nil, err
	}
	cfg.ServerName = serverName
	return cfg, nil
}

// backgroundTimeout bounds the work a balancer does in the background.
func (d *tlsDialer) backgroundTimeout() time.Duration {
	if d.net.Timeout > 0 {
		return d.net.Timeout
	}
	return 5 * time.Second
}

// transport returns an HTTP/2-only transport whose connections dialTLS
// makes, or, when it is nil, d to the request's host, verified for that
// host's name.
func (d *tlsDialer) transport(dialTLS func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	if dialTLS == nil {
		dialTLS = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return d.dial(ctx, network, addr, host, nil)
		}
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP2(true)
	return &http.Transport{
		DialTLSContext:    dialTLS,
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
