package order

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/token"
)

// Config assembles an order service server: OrderService on a Palisade
// server that verifies tokens with the issuer's JWKS, and a client of the
// user service that acts for the caller's user with a delegated token.
type Config struct {
	// Source is the service's certificate and trust bundle. Required.
	Source mtls.Source
	// Store holds the orders. Required.
	Store *Store
	// Authorizer decides every call of the server NewServer builds
	// (required there; New does not use it).
	Authorizer authz.Authorizer
	// UserURL is the user service's base URL, or the base URLs of its
	// replicas separated by commas ("https://a:8443,https://b:8443"), over
	// which the calls are then spread (see rpc.WithEndpoints). Required.
	UserURL string
	// UserDNSRefresh, when positive, makes the client of the user service
	// resolve the host names of UserURL itself and spread its calls over all
	// their addresses, resolved again this often (see rpc.WithDNSEndpoints).
	UserDNSRefresh time.Duration
	// UserID is the SPIFFE ID the user service must present (default
	// spiffe://<trust domain>/svc/user); it is also the default TokenIssuer.
	UserID string
	// JWKSURL defaults to the first UserURL + token.JWKSPath (fetched, like
	// every call to the user service, from any of its replicas).
	JWKSURL     string
	TokenIssuer string
	// JWKSMinRefresh bounds refetches caused by unknown key ids (default 30s).
	JWKSMinRefresh time.Duration
	// UpstreamTimeout bounds each call to the user service (default 3s).
	UpstreamTimeout time.Duration
	// UserCache configures the cache of users that CreateOrder and
	// ImportOrders consult before they ask the user service, kept fresh by
	// the user service's change feed (see UserCache).
	UserCache UserCacheOptions
	Logger    *slog.Logger
	// ServerOptions are passed to rpc.NewServer after the ones Config sets.
	ServerOptions []rpc.ServerOption
	// ClientOptions are passed to the clients of the user service (and its
	// JWKS) after the ones Config sets, for example rpc.WithTracerProvider
	// so the call to the user service joins the caller's trace.
	ClientOptions []rpc.ClientOption
}

// Server is the order service: its handler (OrderService), its token
// verifier (the issuer's keys, fetched from the JWKS), its clients of the
// user service, the cache of users, and the background loops they need.
type Server struct {
	// Server is the RPC server the handler is mounted on: the one NewServer
	// builds, or the one given to Mount.
	*rpc.Server
	// Keys are the issuer's keys as fetched from the JWKS.
	Keys *token.RemoteKeys
	// Verifier verifies the tokens of calls with Keys.
	Verifier *token.Verifier
	// UserCache is the cache of users; its Stats are the feed's counters
	// and last applied sequence, and its Done is closed once the feed's
	// subscriber has stopped.
	UserCache *UserCache
	// Loops are the background loops of the service (the JWKS refresh, the
	// subscriber of the user change feed): New and NewServer start none.
	// Run each until the service stops — kit.Service.Go does — or all of
	// them with Run.
	Loops []Loop

	service orderv1connect.OrderServiceHandler
	logger  *slog.Logger
}

// Loop is a background loop of a service: it runs until its context is
// done, and an error it returns otherwise is a failure of the service.
type Loop struct {
	Name string
	Run  func(ctx context.Context) error
}

// ServerOptions are the options the server of the order service needs,
// beside its token verifier: every order of an import is authorized, not
// just the stream.
func ServerOptions() []rpc.ServerOption {
	return []rpc.ServerOption{
		rpc.WithAuthorizationOptions(authz.WithPerMessage(orderv1connect.OrderServiceImportOrdersProcedure)),
	}
}

// NewServer builds the service (New) on a server of its own, built with
// cfg.Authorizer, the service's token verifier, ServerOptions and
// cfg.ServerOptions. It starts no goroutine: run srv.Loops (Run) for as
// long as it serves.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Authorizer == nil {
		return nil, errors.New("order: server needs an authorizer")
	}
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	opts := append([]rpc.ServerOption{
		rpc.WithLogger(s.logger),
		rpc.WithTokenVerifier(s.Verifier),
	}, ServerOptions()...)
	srv, err := rpc.NewServer(cfg.Source, cfg.Authorizer, append(opts, cfg.ServerOptions...)...)
	if err != nil {
		return nil, err
	}
	if err := s.Mount(srv); err != nil {
		return nil, err
	}
	return s, nil
}

// New builds the service's handler, token verifier and clients of the
// user service, without a server: Mount it on one whose token verifier is
// s.Verifier (the kit's WithTokenVerifier) and that has ServerOptions.
// cfg.Authorizer and cfg.ServerOptions are not used. It starts no
// goroutine: run s.Loops for as long as the service serves.
func New(cfg Config) (*Server, error) {
	userURLs := splitURLs(cfg.UserURL)
	if cfg.Source == nil || cfg.Store == nil || len(userURLs) == 0 {
		return nil, errors.New("order: service needs a source, a store and the user service URL")
	}
	userURL := userURLs[0]
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The handlers' lines carry the request id of the call, like the server's.
	cfg.Logger = slog.New(rpc.LogHandler(cfg.Logger.Handler()))
	self, err := mtls.IdentityOf(cfg.Source)
	if err != nil {
		return nil, err
	}
	td := self.TrustDomain()
	if cfg.UserID == "" {
		cfg.UserID = "spiffe://" + td + "/svc/user"
	}
	if cfg.JWKSURL == "" {
		cfg.JWKSURL = strings.TrimRight(userURL, "/") + token.JWKSPath
	}
	if cfg.TokenIssuer == "" {
		cfg.TokenIssuer = cfg.UserID
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 3 * time.Second
	}
	upstream := []rpc.ClientOption{
		rpc.WithServerID(cfg.UserID),
		rpc.WithCallTimeout(cfg.UpstreamTimeout),
		rpc.WithLogger(cfg.Logger),
	}
	upstream = append(upstream, cfg.ClientOptions...)

	// Every call to the user service goes over one HTTP client, so its
	// connections are shared: a delegated token is exchanged over the
	// connections the call it is for will take, and is bound to the
	// certificate they present (see rpc.WithDelegation). With several replicas,
	// the client spreads the calls over them and fails over, and it moves
	// to new connections when this service's certificate changes, so that
	// every replica is reached with the certificate tokens are bound to.
	httpOpts := slices.Clone(upstream)
	if len(userURLs) > 1 || cfg.UserDNSRefresh > 0 {
		httpOpts = append(httpOpts, rpc.WithEndpoints(userURLs...))
	}
	if cfg.UserDNSRefresh > 0 {
		httpOpts = append(httpOpts, rpc.WithDNSEndpoints(cfg.UserDNSRefresh))
	}
	upstreamHTTP, err := rpc.NewHTTPClient(cfg.Source, httpOpts...)
	if err != nil {
		return nil, err
	}
	upstream = append(upstream, rpc.WithHTTPClient(upstreamHTTP))

	// Tokens are verified with the issuer's keys, fetched over mTLS from the
	// user service and refreshed in the background by a loop.
	keys := token.NewRemoteKeys(cfg.JWKSURL, upstreamHTTP, token.WithMinRefreshInterval(cfg.JWKSMinRefresh), token.WithLogger(cfg.Logger))
	verifier, err := token.NewVerifier(cfg.TokenIssuer, self.String(), keys)
	if err != nil {
		return nil, err
	}

	// The user service is called for the user of the incoming call, with
	// that user's token exchanged for a delegated one at the user service's
	// TokenService, over the same connections (rpc.WithDelegation).
	users, err := rpc.NewClient(userv1connect.NewUserServiceClient, userURL, cfg.Source, append(upstream, rpc.WithDelegation(userURL))...)
	if err != nil {
		return nil, err
	}

	// The cache of users follows the change feed, to which the order
	// service subscribes as itself: its certificate, no token. Any replica
	// of the user service serves it; when one goes away, the subscriber
	// resumes on another after the last change it applied.
	if cfg.UserCache.Logger == nil {
		cfg.UserCache.Logger = cfg.Logger
	}
	cache, err := NewUserCache(cfg.UserCache)
	if err != nil {
		return nil, err
	}
	feed, err := rpc.NewClient(userv1connect.NewUserServiceClient, userURL, cfg.Source, upstream...)
	if err != nil {
		return nil, err
	}

	loops := []Loop{
		{Name: "jwks refresh", Run: keys.Run},
		{Name: "user change feed", Run: func(ctx context.Context) error {
			// Then waits for the balancer's probes of the user service's
			// replicas.
			defer upstreamHTTP.CloseIdleConnections()
			return cache.Run(ctx, feed)
		}},
	}
	service := NewService(cfg.Store, cache.Directory(users), cfg.Logger)
	return &Server{Keys: keys, Verifier: verifier, UserCache: cache, Loops: loops, service: service, logger: cfg.Logger}, nil
}

// Mount mounts the service's handler on srv and makes srv s.Server. srv
// must have ServerOptions.
func (s *Server) Mount(srv *rpc.Server) error {
	if err := rpc.Mount(srv, orderv1connect.NewOrderServiceHandler, s.service); err != nil {
		return err
	}
	s.Server = srv
	return nil
}

// Run runs every loop of s until ctx is done and they have all returned,
// and returns their failures (not their context's end), joined: for a
// caller that does not run them with kit.Service.Go.
func (s *Server) Run(ctx context.Context) error {
	errs := make([]error, len(s.Loops))
	var wg sync.WaitGroup
	for i, l := range s.Loops {
		wg.Go(func() {
			if err := l.Run(ctx); err != nil && ctx.Err() == nil {
				errs[i] = fmt.Errorf("%s: %w", l.Name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// splitURLs splits a comma-separated list of URLs, dropping blanks.
func splitURLs(list string) []string {
	var urls []string
	for u := range strings.SplitSeq(list, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}
