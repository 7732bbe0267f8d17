package user

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/proto/palisade/token/v1/tokenv1connect"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
)

// Config assembles a user service server: UserService, AuthService and
// Palisade's TokenService (the token exchange) on a Palisade server, with
// the token issuer, its verification keys and the JWKS at token.JWKSPath.
type Config struct {
	// Source is the service's certificate and trust bundle. Required.
	Source mtls.Source
	// Store holds the users. Required.
	Store *Store
	// Authorizer decides every call of the server NewServer builds
	// (required there; New does not use it).
	Authorizer authz.Authorizer
	// KeysFile is the signing key set file, created (with a SigningAlg key)
	// when missing and watched for rotations every KeyReloadInterval (default
	// 2s). Without it, Keys is used as given.
	KeysFile          string
	SigningAlg        string
	KeyReloadInterval time.Duration
	Keys              *token.KeySet
	// TokenTTL is the lifetime of Login tokens (default 15m).
	TokenTTL time.Duration
	// Issuer is the iss of tokens (default the service's SPIFFE ID).
	Issuer string
	// Audiences of Login tokens (default the service's SPIFFE ID and
	// spiffe://<trust domain>/svc/order), and those the token exchange
	// issues for; the first is the exchange's default.
	Audiences []string
	// PasswordParams are the argon2id parameters of the password checker's
	// dummy hash (default password.DefaultParams()); keep them those of the
	// stored hashes so unknown users cost the same.
	PasswordParams *password.Params
	// Auth tunes login throttling (its Issuer, Passwords and Logger are
	// filled in).
	Auth AuthOptions
	// ChangeRetention bounds the change history WatchUserChanges serves
	// (default DefaultRetention()); it is set on Store.
	ChangeRetention Retention
	// HeartbeatInterval is how often a caught-up WatchUserChanges stream
	// sends a heartbeat (default DefaultHeartbeatInterval).
	HeartbeatInterval time.Duration
	Logger            *slog.Logger
	// ServerOptions are passed to rpc.NewServer by NewServer, after the
	// ones it sets.
	ServerOptions []rpc.ServerOption
}

// Server is the user service: its handlers (UserService, AuthService and
// the JWKS), token issuer and verifier, and the background loops they need.
type Server struct {
	// Server is the RPC server the handlers are mounted on: the one
	// NewServer builds, or the one given to Mount.
	*rpc.Server
	Issuer   *token.Issuer
	Verifier *token.Verifier
	// Loops are the background loops of the service (the reload of
	// KeysFile): New and NewServer start none. Run each until the service
	// stops — kit.Service.Go does — or all of them with Run.
	Loops []Loop

	cfg      Config
	auth     *AuthService
	exchange *token.ExchangeHandler
	jwks     *token.JWKSHandler
}

// Loop is a background loop of a service: it runs until its context is
// done, and an error it returns otherwise is a failure of the service.
type Loop struct {
	Name string
	Run  func(ctx context.Context) error
}

// NewServer builds the service (New) on a server of its own, built with
// cfg.Authorizer, the service's token verifier and cfg.ServerOptions. It
// starts no goroutine: run srv.Loops (Run) for as long as it serves.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Authorizer == nil {
		return nil, errors.New("user: server needs an authorizer")
	}
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	opts := append([]rpc.ServerOption{
		rpc.WithLogger(s.cfg.Logger),
		rpc.WithTokenVerifier(s.Verifier),
	}, cfg.ServerOptions...)
	srv, err := rpc.NewServer(cfg.Source, cfg.Authorizer, opts...)
	if err != nil {
		return nil, err
	}
	if err := s.Mount(srv); err != nil {
		return nil, err
	}
	return s, nil
}

// New builds the service's handlers, token issuer and verifier, without a
// server: Mount them on one whose token verifier is s.Verifier (the kit's
// WithTokenVerifier). cfg.Authorizer and cfg.ServerOptions are not used. It
// starts no goroutine: run s.Loops for as long as the service serves.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil || cfg.Store == nil {
		return nil, errors.New("user: service needs a source and a store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The handlers' lines carry the request id of the call, like the server's.
	cfg.Logger = slog.New(rpc.LogHandler(cfg.Logger.Handler()))
	if cfg.ChangeRetention != (Retention{}) {
		if err := cfg.Store.SetRetention(cfg.ChangeRetention); err != nil {
			return nil, err
		}
	}
	self, err := mtls.IdentityOf(cfg.Source)
	if err != nil {
		return nil, err
	}
	if cfg.Issuer == "" {
		cfg.Issuer = self.String()
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{self.String(), "spiffe://" + self.TrustDomain() + "/svc/order"}
	}
	ks := cfg.Keys
	if cfg.KeysFile != "" {
		if cfg.SigningAlg == "" {
			cfg.SigningAlg = token.DefaultSigningAlg
		}
		var created bool
		if ks, created, err = token.LoadOrCreateKeySet(cfg.KeysFile, cfg.SigningAlg); err != nil {
			return nil, err
		}
		if created {
			cfg.Logger.Info("created a signing key", "file", cfg.KeysFile, "kid", ks.Active)
		}
	}
	if ks == nil {
		return nil, errors.New("user: server needs a KeysFile or Keys")
	}
	issuer, err := token.NewIssuer(ks, cfg.Issuer, token.WithAudience(cfg.Audiences...), token.WithTTL(cfg.TokenTTL))
	if err != nil {
		return nil, err
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		return nil, err
	}
	keys := token.NewStaticKeys(pubs)
	verifier, err := token.NewVerifier(cfg.Issuer, self.String(), keys)
	if err != nil {
		return nil, err
	}
	jwks := &token.JWKSHandler{}
	if err := jwks.Set(pubs); err != nil {
		return nil, err
	}
	var loops []Loop
	if cfg.KeysFile != "" {
		interval := cfg.KeyReloadInterval
		if interval <= 0 {
			interval = 2 * time.Second
		}
		loops = append(loops, Loop{Name: "signing key reload", Run: func(ctx context.Context) error {
			return token.WatchKeySet(ctx, cfg.KeysFile, interval, func(ks *token.KeySet, err error) {
				if err != nil {
					cfg.Logger.Error("signing key set changed but does not load; keeping the previous one", "path", cfg.KeysFile, "error", err)
					return
				}
				pubs, err := ks.PublicKeys()
				if err == nil {
					err = issuer.SetKeys(ks)
				}
				if err == nil {
					err = jwks.Set(pubs)
				}
				if err != nil {
					cfg.Logger.Error("applying the reloaded key set failed", "error", err)
					return
				}
				keys.Set(pubs)
				cfg.Logger.Info("signing key set reloaded", "path", cfg.KeysFile, "active", ks.Active, "keys", len(ks.Keys))
			})
		}})
	}

	params := password.DefaultParams()
	if cfg.PasswordParams != nil {
		params = *cfg.PasswordParams
	}
	checker, err := password.NewChecker(params)
	if err != nil {
		return nil, err
	}
	authOpts := cfg.Auth
	authOpts.Issuer, authOpts.Passwords, authOpts.Logger = issuer, checker, cfg.Logger
	auth, err := NewAuthService(cfg.Store, authOpts)
	if err != nil {
		return nil, err
	}
	// The token exchange: the workloads the policy allows (the delegates)
	// trade a user's token for one that lets them act for the user.
	exchange, err := token.NewExchangeHandler(issuer, verifier, cfg.Audiences, token.WithLogger(cfg.Logger))
	if err != nil {
		return nil, err
	}

	return &Server{Issuer: issuer, Verifier: verifier, Loops: loops, cfg: cfg, auth: auth, exchange: exchange, jwks: jwks}, nil
}

// Mount mounts the service's handlers on srv — UserService, AuthService,
// the token exchange (palisade.token.v1.TokenService) and the JWKS at
// token.JWKSPath — and makes srv s.Server.
func (s *Server) Mount(srv *rpc.Server) error {
	users := NewService(s.cfg.Store, s.cfg.Logger, WithHeartbeatInterval(s.cfg.HeartbeatInterval))
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(users)); err != nil {
		return err
	}
	if err := rpc.Mount(srv, userv1connect.NewAuthServiceHandler, userv1connect.AuthServiceHandler(s.auth)); err != nil {
		return err
	}
	if err := rpc.Mount(srv, tokenv1connect.NewTokenServiceHandler, tokenv1connect.TokenServiceHandler(s.exchange)); err != nil {
		return err
	}
	if err := srv.HandleHTTP(token.JWKSPath, s.jwks); err != nil {
		return err
	}
	s.Server = srv
	return nil
}

// Run runs every loop of s until ctx is done and they have all returned,
// and returns their failures (not their context's end), joined: for a
// caller that does not run them with kit.Service.Go.
func (s *Server) Run(ctx context.Context) error {
	return runLoops(ctx, s.Loops)
}

// runLoops runs loops, each in a goroutine, and waits for all of them.
func runLoops(ctx context.Context, loops []Loop) error {
	errs := make([]error, len(loops))
	var wg sync.WaitGroup
	for i, l := range loops {
		wg.Go(func() {
			if err := l.Run(ctx); err != nil && ctx.Err() == nil {
				errs[i] = fmt.Errorf("%s: %w", l.Name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
