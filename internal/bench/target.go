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

	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
)

// getUserFunc makes one GetUser call for id, sending auth as the
// Authorization header ("" sends none), and returns the id of the user in
// the answer.
type getUserFunc func(ctx context.Context, id, auth string) (string, error)

// target is one configuration, serving on 127.0.0.1, with its clients.
type target struct {
	config string
	// tokens says whether callers send their user's token: the
	// configurations that verify tokens, and mtls+bearer.
	tokens bool
	// verifies says whether the server checks the token (false for
	// mtls+bearer, which only carries it).
	verifies bool
	// calls[protocol][k] calls over connection k.
	calls map[string][]getUserFunc
	// noCert[protocol] calls from a client that presents no certificate;
	// empty for h2c. The preflight uses it, then dropNoCert closes it.
	noCert      map[string]getUserFunc
	noCertClose func()
	// accepted counts the connections the server accepted.
	accepted atomic.Int64
	closers  []func()
}

// close stops the clients and the server, last started first.
func (t *target) close() {
	t.dropNoCert()
	for i := len(t.closers) - 1; i >= 0; i-- {
		t.closers[i]()
	}
	t.closers = nil
}

// dropNoCert closes the client without a certificate, so that nothing of
// it (a grpc-go reconnect loop) runs while the target is measured.
func (t *target) dropNoCert() {
	if t.noCertClose != nil {
		t.noCertClose()
		t.noCertClose = nil
	}
	t.noCert = nil
}

// listen listens on a free port of 127.0.0.1, counting accepted
// connections in t.accepted.
func (t *target) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: %s: listen: %w", t.config, err)
	}
	return countingListener{Listener: ln, n: &t.accepted}, nil
}

// serve runs serve in a goroutine until stop is called (at close), and
// waits for it to return then.
func (t *target) serve(serve func() error, stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serve() // returns once stopped; the calls report any failure
	}()
	t.closers = append(t.closers, func() { stop(); <-done })
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

// startConnect starts one of the Connect configurations and its clients.
func startConnect(fx *fixture, config string, o Options) (*target, error) {
	t := &target{config: config, calls: map[string][]getUserFunc{}, noCert: map[string]getUserFunc{}}
	ln, err := t.listen()
	if err != nil {
		return nil, err
	}
	scheme := "https"
	switch config {
	case ConfigH2C, ConfigTLS, ConfigMTLS, ConfigMTLSBearer:
		// Bare Connect: the generated handler with the handler options a
		// Palisade server gives it (size limit, compression threshold), on
		// an http.Server with Palisade's limits, and nothing else.
		mux := http.NewServeMux()
		mux.Handle(userv1connect.NewUserServiceHandler(users{},
			connect.WithReadMaxBytes(rpc.DefaultReadMaxBytes),
			connect.WithCompressMinBytes(rpc.DefaultCompressMinBytes)))
		hs := bareHTTPServer(mux)
		switch config {
		case ConfigH2C:
			scheme = "http"
			hs.Protocols.SetUnencryptedHTTP2(true)
			t.serve(func() error { return hs.Serve(ln) }, func() { _ = hs.Close() })
		case ConfigTLS, ConfigMTLS, ConfigMTLSBearer:
			hs.Protocols.SetHTTP1(true)
			hs.Protocols.SetHTTP2(true)
			hs.TLSConfig = fx.serverTLS(config != ConfigTLS, "h2", "http/1.1")
			t.serve(func() error { return hs.ServeTLS(ln, "", "") }, func() { _ = hs.Close() })
		}
		t.tokens = config == ConfigMTLSBearer
	case ConfigMTLSJWT, ConfigFull:
		if err := startPalisade(t, fx, ln, o.ServerLog); err != nil {
			_ = ln.Close()
			return nil, err
		}
		t.tokens, t.verifies = true, true
	default:
		_ = ln.Close()
		return nil, fmt.Errorf("bench: %q is not a Connect configuration", config)
	}

	baseURL := scheme + "://" + ln.Addr().String()
	for range o.Connections {
		// One HTTP client, hence one HTTP/2 connection, per connection slot.
		// The TLS configurations use Palisade's client (TLS 1.3, the client
		// certificate, the server's SPIFFE ID checked); a server that asks
		// for no certificate simply gets none.
		hc, err := newHTTPClient(fx, config == ConfigH2C)
		if err != nil {
			t.close()
			return nil, err
		}
		t.closers = append(t.closers, hc.CloseIdleConnections)
		for _, p := range o.Protocols {
			t.calls[p] = append(t.calls[p], connectGetUser(hc, baseURL, p))
		}
	}
	if config != ConfigH2C {
		protocols := new(http.Protocols)
		protocols.SetHTTP2(true)
		tr := &http.Transport{TLSClientConfig: fx.clientTLS(false, "h2"), Protocols: protocols, ForceAttemptHTTP2: true}
		t.noCertClose = tr.CloseIdleConnections
		for _, p := range o.Protocols {
			t.noCert[p] = connectGetUser(&http.Client{Transport: tr}, baseURL, p)
		}
	}
	return t, nil
}

// startPalisade serves the measured handler on a Palisade server: the token
// verifier and, for ConfigFull, the OPA engine on the default policy; for
// ConfigMTLSJWT an authorizer that allows every call.
func startPalisade(t *target, fx *fixture, ln net.Listener, serverLog string) error {
	logger := slog.New(slog.DiscardHandler)
	if serverLog == ServerLogJSON {
		logger = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	verifier, err := fx.verifier()
	if err != nil {
		return err
	}
	var authz policy.Authorizer = policy.AuthorizerFunc(func(context.Context, *policy.Input) (policy.Decision, error) {
		return policy.Decision{Allow: true, Revision: "allow-all"}, nil
	})
	if t.config == ConfigFull {
		bundle, err := policy.DefaultBundle()
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		engine, err := policy.NewEngine(context.Background(), bundle, policy.EngineOptions{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		authz = engine
	}
	srv, err := rpc.NewServer(fx.serverSrc, authz,
		rpc.WithLogger(logger), rpc.WithTokenVerifier(verifier), rpc.WithShutdownGrace(time.Second))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(users{})); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.serve(func() error { return srv.Serve(ctx, ln) }, cancel)
	return nil
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

// newHTTPClient returns Palisade's mTLS HTTP/2 client, or for h2c one over
// cleartext HTTP/2 with the same transport settings.
func newHTTPClient(fx *fixture, h2c bool) (*http.Client, error) {
	if !h2c {
		hc, err := rpc.NewHTTPClient(fx.clientSrc, rpc.WithServerID(serverID))
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		return hc, nil
	}
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:       protocols,
		IdleConnTimeout: 90 * time.Second,
		HTTP2:           &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 5 * time.Second},
	}}, nil
}

// connectGetUser returns a getUserFunc over a Connect client speaking
// protocol, built as the generated client builds it.
func connectGetUser(hc connect.HTTPClient, baseURL, protocol string) getUserFunc {
	method := userv1.File_user_v1_user_proto.Services().ByName("UserService").Methods().ByName("GetUser")
	opts := []connect.ClientOption{connect.WithSchema(method), connect.WithIdempotency(connect.IdempotencyNoSideEffects)}
	if protocol == ProtocolGRPC {
		opts = append(opts, connect.WithGRPC())
	}
	client := connect.NewClient[userv1.GetUserRequest, userv1.GetUserResponse](hc, baseURL+userv1connect.UserServiceGetUserProcedure, opts...)
	return func(ctx context.Context, id, auth string) (string, error) {
		req := connect.NewRequest(&userv1.GetUserRequest{Id: id})
		if auth != "" {
			req.Header().Set("Authorization", auth)
		}
		res, err := client.CallUnary(ctx, req)
		if err != nil {
			return "", err
		}
		return res.Msg.GetUser().GetId(), nil
	}
}
