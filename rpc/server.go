// Package rpc is Palisade's face: a server that serves Connect, gRPC and
// gRPC-Web on one mTLS listener with every call passing the security chain,
// and a client constructor for generated Connect clients.
//
// The chain, outermost first:
//
//	TLS 1.3 handshake, client certificate verified against the trust bundle
//	HTTP middleware: the request id (X-Request-Id) and the access log, one line per request
//	HTTP middleware: the peer's SPIFFE ID, before any message is read   -> security.Principal
//	HTTP middleware: the bound on the time the body may take (WithBodyReadTimeout)
//	request gate, once the headers are in and before the body is read: for a
//	  unary call, the rate limit (WithRateLimit) and the decision the policy can
//	  take without the request (authz.Interceptor.DecideBeforeRequest)
//	interceptor: tracing and RPC metrics (otelconnect), with WithTracerProvider / WithMeterProvider
//	interceptor: rate limit per principal, for streams (WithRateLimit)
//	interceptor: open streams per principal (WithMaxStreamsPerPrincipal)
//	interceptor: message and byte caps on client streams (WithMaxStreamMessages, WithMaxStreamBytes)
//	interceptor: authorization (authz.Authorizer), failing closed
//	interceptor: validation of request messages (protovalidate rules in the .proto)
//	interceptor: streams end when their token expires or the server drains (streams.go)
//	interceptors added with WithInterceptors
//	handler
//
// Validation runs after authorization, so a caller the policy refuses
// learns nothing about what a valid request looks like.
//
// Services are mounted with Mount, which hands the server's handler options
// (the chain, the size limits) to the generated constructor itself, so a
// mounted service cannot be served without them. The server has no other way
// to add an RPC handler.
package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Defaults for the server's limits. Each has an option to change it.
const (
	DefaultReadMaxBytes         = 4 << 20 // largest request message, after decompression
	DefaultMaxHeaderBytes       = 64 << 10
	DefaultReadHeaderTimeout    = 5 * time.Second
	DefaultIdleTimeout          = 2 * time.Minute
	DefaultShutdownGrace        = 10 * time.Second
	DefaultMaxConcurrentStreams = 250
	// DefaultBodyReadTimeout bounds the time from a call's headers to its
	// whole body (unary) or first message (streams); see WithBodyReadTimeout.
	DefaultBodyReadTimeout = 10 * time.Second
	// DefaultCompressMinBytes: replies smaller than this are not compressed
	// even when the client accepts gzip; compressing small messages costs more
	// CPU than it saves bandwidth.
	DefaultCompressMinBytes = 4 << 10
)

// HTTP/2 bounds on what a client can make the server hold for it. net/http
// would read frames of up to 1 MiB, and keeps each connection's read buffer
// at the size of the largest frame announced on it (allocated on the
// frame's header, before its payload arrives): 16 KiB, the protocol's
// default, caps that buffer; every HTTP/2 client writes frames of that size
// anyway. Request bytes received but not yet read by a handler are bounded
// by the flow-control windows: 1 MiB per connection (net/http's default,
// made explicit), and a quarter of it per stream, so one stream whose
// handler does not read (net/http's default is 1 MiB) cannot hold the
// window the connection's other streams need.
const (
	h2MaxReadFrameSize          = 16 << 10
	h2MaxReceiveBufferPerConn   = 1 << 20
	h2MaxReceiveBufferPerStream = 256 << 10
)

// Server serves mounted Connect services over mTLS.
type Server struct {
	cfg        serverConfig
	src        mtls.Source
	authorizer *authz.Interceptor
	rateLimit  *rateLimiter      // nil when off
	perCaller  *principalStreams // nil when off
	streams    *streamGuard
	mux        *http.ServeMux
	health     *grpchealth.StaticChecker
	http       *http.Server
	errWriter  *connect.ErrorWriter
	conns      *connGuard               // closes connections whose peer certificate expired or was revoked
	pinned     map[[32]byte]spiffeid.ID // WithPinnedClientCertificate
	workloads  workloadCache            // identities of the verified client certificates

	requestIDs *requestIDs
	accessLog  *slog.Logger // the logger without LogHandler: its lines add the request id themselves
	tel        *serverTelemetry
	validation *validation

	mu       sync.Mutex
	services map[string]bool // mounted service names, for health and reflection
	serving  bool
	addr     net.Addr
}

// NewServer returns a server whose workload certificate and trust bundle come
// from src and whose every call is decided by authorizer. Health
// (grpc.health.v1) and reflection (grpc.reflection.v1 and v1alpha) are
// mounted through the same chain.
func NewServer(src mtls.Source, authorizer authz.Authorizer, opts ...ServerOption) (*Server, error) {
	if src == nil {
		return nil, errors.New("rpc: NewServer needs an mtls.Source")
	}
	if authorizer == nil {
		return nil, errors.New("rpc: NewServer needs an authz.Authorizer: every call is authorized")
	}
	cfg := defaultServerConfig()
	for _, o := range opts {
		o.applyServer(&cfg)
	}
	if err := resolveTrustDomain(&cfg.trustDomain, src); err != nil {
		return nil, fmt.Errorf("rpc: server: %w", err)
	}
	pinned, err := pinnedIDs(cfg.pinned, cfg.trustDomain)
	if err != nil {
		return nil, err
	}
	// Every line the server logs for a call carries its request id.
	accessLog := slog.New(withoutLogHandler(cfg.logger.Handler()))
	cfg.logger = slog.New(LogHandler(cfg.logger.Handler()))
	tel, err := newServerTelemetry(&cfg, src, authorizer)
	if err != nil {
		return nil, err
	}
	validation, err := newValidation(cfg.logger)
	if err != nil {
		return nil, err
	}
	authzOptions := append([]authz.InterceptorOption{authz.WithLogger(cfg.logger), authz.WithDecisionHook(tel.decided)}, cfg.authzOptions...)
	s := &Server{
		cfg:        cfg,
		src:        src,
		authorizer: authz.NewInterceptor(authorizer, authzOptions...),
		streams:    newStreamGuard(),
		mux:        http.NewServeMux(),
		health:     grpchealth.NewStaticChecker(),
		errWriter:  connect.NewErrorWriter(),
		conns:      newConnGuard(cfg.logger, src, cfg.now),
		services:   map[string]bool{},
		pinned:     pinned,
		requestIDs: newRequestIDs(),
		accessLog:  accessLog,
		tel:        tel,
		validation: validation,
		rateLimit:  newRateLimiter(cfg.rateLimit),
	}
	if s.conns.ages, err = newConnAges(s.conns, cfg.maxConnAge, cfg.maxConnAgeGrace); err != nil {
		return nil, err
	}
	if cfg.maxStreamsPerPrincipal > 0 {
		s.perCaller = newPrincipalStreams(cfg.maxStreamsPerPrincipal)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	s.http = &http.Server{
		Handler:           s.conns.drain(s.front(s.mux)),
		TLSConfig:         s.conns.tlsConfig(mtls.ServerConfig(src, "h2", "http/1.1")),
		Protocols:         protocols,
		ReadHeaderTimeout: cfg.readHeaderTimeout,
		IdleTimeout:       cfg.idleTimeout,
		MaxHeaderBytes:    cfg.maxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          cfg.maxConcurrentStreams,
			MaxReadFrameSize:              h2MaxReadFrameSize,
			MaxReceiveBufferPerConnection: h2MaxReceiveBufferPerConn,
			MaxReceiveBufferPerStream:     h2MaxReceiveBufferPerStream,
			// net/http reads a header block whole before its serving loop
			// sees it, so ReadHeaderTimeout does not apply over HTTP/2; but a
			// client in the middle of a header block (or any frame) cannot
			// answer a PING. One goes out after half the timeout without a
			// complete frame, and the connection is closed when the other
			// half passes unanswered (logged by http2ErrorLog).
			SendPingTimeout: cfg.readHeaderTimeout / 2,
			PingTimeout:     cfg.readHeaderTimeout - cfg.readHeaderTimeout/2,
		},
		ErrorLog:    http2ErrorLog(cfg.logger),
		ConnState:   s.conns.connState,
		ConnContext: s.conns.connContext,
	}

	if err := Mount(s, grpchealth.NewHandler, grpchealth.Checker(s.health)); err != nil {
		return nil, err
	}
	reflector := grpcreflect.NewReflector(namer{s})
	if err := Mount(s, grpcreflect.NewHandlerV1, reflector); err != nil {
		return nil, err
	}
	if err := Mount(s, grpcreflect.NewHandlerV1Alpha, reflector); err != nil {
		return nil, err
	}
	return s, nil
}

// Mount serves a generated Connect service on s. newHandler is the generated
// constructor (for example userv1connect.NewUserServiceHandler) and impl the
// service implementation. The server passes its handler options — the
// security chain, limits, compression — to newHandler, followed by opts.
// Interceptors in opts run inside the security chain.
//
// Mount fails if the service is already mounted or the server is serving.
func Mount[T any](s *Server, newHandler func(T, ...connect.HandlerOption) (string, http.Handler), impl T, opts ...connect.HandlerOption) error {
	path, h := newHandler(impl, append(s.handlerOptions(), opts...)...)
	return s.register(path, h)
}

func (s *Server) handlerOptions() []connect.HandlerOption {
	interceptors := append([]connect.Interceptor(nil), s.tel.interceptors()...)
	if s.rateLimit != nil {
		interceptors = append(interceptors, s.rateLimit)
	}
	if s.perCaller != nil {
		interceptors = append(interceptors, s.perCaller)
	}
	// The codecs report message sizes to this service's stream limit.
	sizes := new(messageSizes)
	if s.cfg.maxStreamMessages > 0 || s.cfg.maxStreamBytes > 0 {
		interceptors = append(interceptors, &streamLimit{maxMessages: s.cfg.maxStreamMessages, maxBytes: s.cfg.maxStreamBytes, sizes: sizes})
	}
	interceptors = append(interceptors, s.authorizer, s.validation, s.streams)
	interceptors = append(interceptors, s.cfg.interceptors...)
	return append(codecs(sizes),
		connect.WithRequestGate(s.gate),
		connect.WithInterceptors(interceptors...),
		connect.WithReadMaxBytes(s.cfg.readMaxBytes),
		boundedGzip(s.cfg.readMaxBytes),
		connect.WithCompressMinBytes(s.cfg.compressMinBytes),
	)
}

func (s *Server) register(path string, h http.Handler) error {
	name := strings.Trim(path, "/")
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("rpc: mount: %q is not a service path", path)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving {
		return fmt.Errorf("rpc: mount %s: server is already serving", name)
	}
	if s.services[name] {
		return fmt.Errorf("rpc: mount %s: already mounted", name)
	}
	s.services[name] = true
	s.mux.Handle(path, h)
	s.health.SetStatus(name, grpchealth.StatusServing)
	return nil
}

// HandleHTTP serves a plain HTTP handler (not an RPC) at path, for
// documents such as a JWKS. path must start with "/.well-known/", so it can
// never shadow a mounted service. It is still behind the TLS handshake and
// the peer-identity middleware, but no RPC interceptor runs for it.
func (s *Server) HandleHTTP(path string, h http.Handler) error {
	if !strings.HasPrefix(path, "/.well-known/") || strings.ContainsAny(path, " {}") {
		return fmt.Errorf("rpc: handle %q: plain HTTP paths must start with /.well-known/", path)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving {
		return fmt.Errorf("rpc: handle %s: server is already serving", path)
	}
	s.mux.Handle(path, h)
	return nil
}

// serviceNames returns the names of the mounted services, sorted.
func (s *Server) serviceNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.services))
	for n := range s.services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

type namer struct{ s *Server }

func (n namer) Names() []string { return n.s.serviceNames() }

// ListenAndServe listens on addr and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("rpc: listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts TLS connections on ln (a plain TCP listener; the server does
// the handshake) until ctx is done. Then it drains: health reports
// NOT_SERVING, open streams end with unavailable (see streams.go), new
// connections are refused, in-flight unary calls get the grace period
// (WithShutdownGrace) to finish, and what is still running after it is cut
// off. Serve returns nil after a clean drain.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("rpc: server is already serving")
	}
	s.serving = true
	s.addr = ln.Addr()
	s.mu.Unlock()
	defer s.tel.close()
	defer s.conns.stop()
	if w, ok := s.src.(mtls.RevocationWatcher); ok {
		done := make(chan struct{})
		var watching sync.WaitGroup
		watching.Go(func() { s.conns.watchRevocations(w, done) })
		defer watching.Wait()
		defer close(done)
	}

	errc := make(chan error, 1)
	go func() { errc <- s.http.ServeTLS(slowClientListener{Listener: ln, log: s.cfg.logger}, "", "") }()
	s.cfg.logger.Info("serving", "addr", ln.Addr().String(), "services", s.serviceNames())

	select {
	case err := <-errc:
		return fmt.Errorf("rpc: serve: %w", err)
	case <-ctx.Done():
	}
	s.cfg.logger.Info("draining", "grace", s.cfg.shutdownGrace.String())
	for _, name := range s.serviceNames() {
		s.health.SetStatus(name, grpchealth.StatusNotServing)
	}
	s.health.SetStatus("", grpchealth.StatusNotServing)
	if n := s.streams.drain(); n > 0 {
		s.cfg.logger.Info("ended open streams: server is draining", "streams", n)
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.shutdownGrace)
	defer cancel()
	err := s.http.Shutdown(shutdownCtx)
	if err != nil {
		s.cfg.logger.Warn("grace period over; closing remaining connections", "error", err)
		_ = s.http.Close()
	}
	<-errc // ServeTLS returns http.ErrServerClosed once Shutdown starts
	s.cfg.logger.Info("stopped")
	if err != nil {
		return fmt.Errorf("rpc: drain: %w", err)
	}
	return nil
}

// Addr returns the address the server listens on, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Serving reports whether s serves calls: Serve has been called and the
// drain has not begun, so the overall grpc.health.v1 status ("") is
// SERVING. It is false before Serve and from the start of the drain on; an
// admin listener's health check (telemetry.WithHealth) answers with it.
func (s *Server) Serving() bool {
	s.mu.Lock()
	serving := s.serving
	s.mu.Unlock()
	if !serving {
		return false
	}
	res, err := s.health.Check(context.Background(), &grpchealth.CheckRequest{})
	return err == nil && res.Status == grpchealth.StatusServing
}
