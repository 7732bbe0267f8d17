package user

import (
	"context"
	"errors"
	"log/slog"
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
	// Authorizer decides every call. Required.
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
	// ServerOptions are passed to rpc.NewServer after the ones Config sets.
	ServerOptions []rpc.ServerOption
}

// Server is a running configuration of the user service.
type Server struct {
	*rpc.Server
	Issuer   *token.Issuer
	Verifier *token.Verifier
}

// NewServer builds the server. Background work (watching KeysFile) stops
// when ctx is done.
func NewServer(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Source == nil || cfg.Store == nil || cfg.Authorizer == nil {
		return nil, errors.New("user: server needs a source, a store and an authorizer")
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
	if cfg.KeysFile != "" {
		interval := cfg.KeyReloadInterval
		if interval <= 0 {
			interval = 2 * time.Second
		}
		go func() {
			_ = token.WatchKeySet(ctx, cfg.KeysFile, interval, func(ks *token.KeySet, err error) {
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
		}()
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

	opts := append([]rpc.ServerOption{
		rpc.WithLogger(cfg.Logger),
		rpc.WithTokenVerifier(verifier),
	}, cfg.ServerOptions...)
	srv, err := rpc.NewServer(cfg.Source, cfg.Authorizer, opts...)
	if err != nil {
		return nil, err
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(NewService(cfg.Store, cfg.Logger, WithHeartbeatInterval(cfg.HeartbeatInterval)))); err != nil {
		return nil, err
	}
	if err := rpc.Mount(srv, userv1connect.NewAuthServiceHandler, userv1connect.AuthServiceHandler(auth)); err != nil {
		return nil, err
	}
	if err := rpc.Mount(srv, tokenv1connect.NewTokenServiceHandler, tokenv1connect.TokenServiceHandler(exchange)); err != nil {
		return nil, err
	}
	if err := srv.HandleHTTP(token.JWKSPath, jwks); err != nil {
		return nil, err
	}
	return &Server{Server: srv, Issuer: issuer, Verifier: verifier}, nil
}
