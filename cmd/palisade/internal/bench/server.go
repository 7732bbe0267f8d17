package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/services/user"
)

// server is one configuration serving on 127.0.0.1.
type server struct {
	config string
	addr   string
	// accepted counts the connections the server accepted.
	accepted atomic.Int64
	// stop stops the server and waits for it.
	stop func()
}

// startServer starts config's server.
func startServer(ctx context.Context, sf *serverFixture, config, serverLog string) (*server, error) {
	spec := specOf(config)
	if spec.stack == stackGRPCGo {
		var intercept grpc.UnaryServerInterceptor
		switch config {
		case ConfigGRPCGo:
			chain, err := newNaiveChain(ctx, sf, time.Now)
			if err != nil {
				return nil, err
			}
			intercept = chain.intercept
		case ConfigGRPCGoPalisade:
			chain, err := newPalisadeOnGRPC(sf)
			if err != nil {
				return nil, err
			}
			intercept = chain.intercept
		case ConfigGRPCGoCache:
			chain, err := newCachedChain(ctx, sf, defaultCacheSize, time.Now)
			if err != nil {
				return nil, err
			}
			intercept = chain.intercept
		}
		return startGRPCGoServer(sf, config, intercept)
	}

	s := &server{config: config}
	ln, err := s.listen()
	if err != nil {
		return nil, err
	}
	switch config {
	case ConfigH2C, ConfigTLS, ConfigMTLS, ConfigMTLSBearer, ConfigConnectDefault:
		// Bare Connect: the generated handler with the handler options a
		// Palisade server gives it (size limit, compression threshold), or
		// none for connect-default-mtls, on an http.Server with Palisade's
		// limits, and nothing else.
		var opts []connect.HandlerOption
		if config != ConfigConnectDefault {
			opts = []connect.HandlerOption{connect.WithReadMaxBytes(rpc.DefaultReadMaxBytes), connect.WithCompressMinBytes(rpc.DefaultCompressMinBytes)}
		}
		mux := http.NewServeMux()
		mux.Handle(userv1connect.NewUserServiceHandler(users{}, opts...))
		hs := bareHTTPServer(mux)
		if config == ConfigH2C {
			hs.Protocols.SetUnencryptedHTTP2(true)
			s.serve(func() error { return hs.Serve(ln) }, func() { _ = hs.Close() })
			break
		}
		s.serveBareTLS(sf, hs, ln)
	case ConfigNetHTTPMTLS:
		// mtls's server, TLS and routing, with a hand-written gRPC
		// handler in connect-go's place.
		s.serveBareTLS(sf, bareHTTPServer(netHTTPGRPCMux(rpc.DefaultReadMaxBytes)), ln)
	case ConfigMTLSJWT, ConfigFull:
		if err := startPalisade(s, sf, ln, serverLog); err != nil {
			_ = ln.Close()
			return nil, err
		}
	default:
		_ = ln.Close()
		return nil, fmt.Errorf("bench: unknown configuration %q", config)
	}
	return s, nil
}

// serveBareTLS serves hs on ln over TLS 1.3, HTTP/2 and HTTP/1.1, as the
// bare configurations do: the client certificate required and verified
// when s's configuration claims it, no write coalescing.
func (s *server) serveBareTLS(sf *serverFixture, hs *http.Server, ln net.Listener) {
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetHTTP2(true)
	hs.TLSConfig = sf.serverTLS(specOf(s.config).clientCert, "h2", "http/1.1")
	s.serve(func() error { return hs.ServeTLS(ln, "", "") }, func() { _ = hs.Close() })
}

// listen listens on a free port of 127.0.0.1, counting accepted
// connections in s.accepted.
func (s *server) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: %s: listen: %w", s.config, err)
	}
	s.addr = ln.Addr().String()
	return countingListener{Listener: ln, n: &s.accepted}, nil
}

// serve runs serve in a goroutine; s.stop calls stop and waits for serve to
// return.
func (s *server) serve(serve func() error, stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serve() // returns once stopped; the calls report any failure
	}()
	s.stop = func() { stop(); <-done }
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startPalisade serves the measured handler on a Palisade server: the token
// verifier and, for ConfigFull, the OPA engine on the default policy; for
// ConfigMTLSJWT an authorizer that allows every call.
func startPalisade(s *server, sf *serverFixture, ln net.Listener, serverLog string) error {
	logger := slog.New(slog.DiscardHandler)
	if serverLog == ServerLogJSON {
		logger = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	verifier, err := sf.verifier()
	if err != nil {
		return err
	}
	var authorizer authz.Authorizer = authz.AuthorizerFunc(func(context.Context, *authz.Input) (authz.Decision, error) {
		return authz.Decision{Allow: true, Revision: "allow-all"}, nil
	})
	if s.config == ConfigFull {
		bundle, err := policy.LoadFS(user.Policy(), "services/user/policy")
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		engine, err := policy.NewEngine(context.Background(), bundle, policy.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		authorizer = engine
	}
	srv, err := rpc.NewServer(sf.src, authorizer,
		rpc.WithLogger(logger), rpc.WithTokenVerifier(verifier), rpc.WithShutdownGrace(time.Second))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(users{})); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.serve(func() error { return srv.Serve(ctx, ln) }, cancel)
	return nil
}

// startGRPCGoServer serves the measured handler on a grpc-go server with
// mTLS and intercept (nil: none) as its unary interceptor.
func startGRPCGoServer(sf *serverFixture, config string, intercept grpc.UnaryServerInterceptor) (*server, error) {
	s := &server{config: config}
	ln, err := s.listen()
	if err != nil {
		return nil, err
	}
	opts := []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(sf.serverTLS(true))),
		grpc.MaxConcurrentStreams(rpc.DefaultMaxConcurrentStreams),
	}
	if intercept != nil {
		opts = append(opts, grpc.UnaryInterceptor(intercept))
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&grpcUserService, users{})
	s.serve(func() error { return srv.Serve(ln) }, srv.Stop)
	return s, nil
}

// bareHTTPServer returns an http.Server with the limits a Palisade server
// sets, so the bare configurations differ from Palisade's only in security.
func bareHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		Protocols:         new(http.Protocols),
		ReadHeaderTimeout: rpc.DefaultReadHeaderTimeout,
		IdleTimeout:       rpc.DefaultIdleTimeout,
		MaxHeaderBytes:    rpc.DefaultMaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: rpc.DefaultMaxConcurrentStreams},
		ErrorLog:          slog.NewLogLogger(slog.DiscardHandler, slog.LevelWarn),
	}
}

// serverSet is the servers of a run, by configuration.
type serverSet map[string]*server

// startServers starts a server for each of configs; on error none is left
// running.
func startServers(ctx context.Context, sf *serverFixture, configs []string, serverLog string) (serverSet, error) {
	set := serverSet{}
	for _, c := range configs {
		s, err := startServer(ctx, sf, c, serverLog)
		if err != nil {
			set.close()
			return nil, err
		}
		set[c] = s
	}
	return set, nil
}

func (set serverSet) close() {
	for c, s := range set {
		s.stop()
		delete(set, c)
	}
}

func (set serverSet) addrs() map[string]string {
	out := make(map[string]string, len(set))
	for c, s := range set {
		out[c] = s.addr
	}
	return out
}

func (set serverSet) accepted() map[string]int64 {
	out := make(map[string]int64, len(set))
	for c, s := range set {
		out[c] = s.accepted.Load()
	}
	return out
}
