package user

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/throttle"
	"github.com/palisade-rpc/palisade/security/token"
)

// Login throttling defaults: failures allowed per window, per username and
// per calling workload.
const (
	DefaultFailuresPerUser = 5
	DefaultFailuresPerPeer = 20
	DefaultFailureWindow   = time.Minute
	throttleKeys           = 10000
)

// AuthOptions configures NewAuthService. Issuer, Verifier and Passwords are required.
type AuthOptions struct {
	// Issuer signs the tokens Login and ExchangeToken return.
	Issuer *token.Issuer
	// Verifier checks the subject tokens presented to ExchangeToken.
	Verifier *token.Verifier
	// Passwords checks passwords (and costs the same for unknown users).
	Passwords *password.Checker
	// Audiences are the audiences ExchangeToken may issue for; the first is
	// the default.
	Audiences []string
	// FailuresPerUser and FailuresPerPeer within FailureWindow lock out
	// further attempts (defaults 5, 20 and one minute).
	FailuresPerUser, FailuresPerPeer int
	FailureWindow                    time.Duration
	Logger                           *slog.Logger
}

// AuthService implements user.v1.AuthService: password login and token
// exchange for workloads that act on a user's behalf. Which workloads may
// exchange is the authorizer's decision.
type AuthService struct {
	store  *Store
	opts   AuthOptions
	byUser *throttle.Limiter
	byPeer *throttle.Limiter
}

var _ userv1connect.AuthServiceHandler = (*AuthService)(nil)

// NewAuthService returns an AuthService over store.
func NewAuthService(store *Store, opts AuthOptions) (*AuthService, error) {
	if opts.Issuer == nil || opts.Verifier == nil || opts.Passwords == nil || len(opts.Audiences) == 0 {
		return nil, errors.New("user: auth service needs an issuer, a verifier, a password checker and audiences")
	}
	if opts.FailuresPerUser <= 0 {
		opts.FailuresPerUser = DefaultFailuresPerUser
	}
	if opts.FailuresPerPeer <= 0 {
		opts.FailuresPerPeer = DefaultFailuresPerPeer
	}
	if opts.FailureWindow <= 0 {
		opts.FailureWindow = DefaultFailureWindow
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &AuthService{
		store:  store,
		opts:   opts,
		byUser: throttle.New(opts.FailuresPerUser, opts.FailureWindow, throttleKeys),
		byPeer: throttle.New(opts.FailuresPerPeer, opts.FailureWindow, throttleKeys),
	}, nil
}

// errLogin is the one answer to a failed login, whatever failed: the user
// does not exist, is inactive, has no password, or the password is wrong.
var errLogin = connect.NewError(connect.CodeUnauthenticated, errors.New("invalid username or password"))

// Login checks the password and returns an access token bound to the
// client certificate of the connection.
func (a *AuthService) Login(ctx context.Context, req *userv1.LoginRequest) (*userv1.LoginResponse, error) {
	p, ok := security.FromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no client identity"))
	}
	if req.GetUsername() == "" || len(req.GetUsername()) > 64 {
		return nil, invalidArgument("username", "required, at most 64 bytes")
	}
	if req.GetTtlSeconds() < 0 {
		return nil, invalidArgument("ttl_seconds", "must not be negative")
	}
	now := time.Now()
	peer := p.Workload.ID.String()
	for _, lim := range []struct {
		l   *throttle.Limiter
		key string
	}{{a.byUser, "user:" + req.GetUsername()}, {a.byPeer, "peer:" + peer}} {
		if ok, retry := lim.l.Allow(lim.key, now); !ok {
			a.opts.Logger.WarnContext(ctx, "login throttled", "username", req.GetUsername(), "peer", peer, "retry_after", retry.String())
			secs := int64(retry.Round(time.Second) / time.Second)
			if secs < 1 {
				secs = 1
			}
			err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("too many failed logins; retry in %ds", secs))
			err.Meta().Set("Retry-After", strconv.FormatInt(secs, 10))
			return nil, err
		}
	}

	hash, u, err := a.store.Credentials(ctx, req.GetUsername())
	if err != nil && !errors.Is(err, ErrNotFound) {
		a.opts.Logger.ErrorContext(ctx, "login: reading credentials failed", "error", err)
		return nil, connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	// Check runs the same argon2id work whether or not the user exists.
	valid := a.opts.Passwords.Check(req.GetPassword(), hash)
	if !valid || u == nil || !u.GetActive() {
		a.byUser.Failure("user:"+req.GetUsername(), now)
		a.byPeer.Failure("peer:"+peer, now)
		a.opts.Logger.InfoContext(ctx, "login failed", "username", req.GetUsername(), "peer", peer)
		return nil, errLogin
	}
	a.byUser.Reset("user:" + req.GetUsername())

	ttl := time.Duration(0)
	if req.GetTtlSeconds() > 0 {
		ttl = time.Duration(req.GetTtlSeconds()) * time.Second
	}
	if def := a.defaultTTL(); ttl <= 0 || ttl > def {
		ttl = def
	}
	tok, exp, err := a.opts.Issuer.Issue(token.Grant{
		Subject:    u.GetId(),
		Roles:      u.GetRoles(),
		TTL:        ttl,
		CertSHA256: &p.Workload.CertSHA256,
	})
	if err != nil {
		a.opts.Logger.ErrorContext(ctx, "login: issuing the token failed", "error", err)
		return nil, connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	a.opts.Logger.InfoContext(ctx, "login", "username", u.GetId(), "peer", peer, "expires", exp)
	return &userv1.LoginResponse{AccessToken: tok, ExpiresIn: int64(ttl / time.Second), TokenType: "Bearer"}, nil
}

func (a *AuthService) defaultTTL() time.Duration { return a.opts.Issuer.TTL() }

// ExchangeToken trades the token of a user, presented by the workload that
// received it, for a token that lets that workload act for the user: sub is
// the user, act.sub the workload, aud the requested service, the lifetime
// at most five minutes (and never past the user's token), bound to the
// workload's certificate. The subject token must name the workload in its
// audience: a service can only exchange tokens that were meant for it.
func (a *AuthService) ExchangeToken(ctx context.Context, req *userv1.ExchangeTokenRequest) (*userv1.ExchangeTokenResponse, error) {
	p, ok := security.FromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no client identity"))
	}
	if req.GetSubjectToken() == "" {
		return nil, invalidArgument("subject_token", "required")
	}
	aud := req.GetAudience()
	if aud == "" {
		aud = a.opts.Audiences[0]
	}
	if !slices.Contains(a.opts.Audiences, aud) {
		return nil, invalidArgument("audience", "not a service this issuer issues tokens for")
	}
	actor := p.Workload.ID.String()
	user, err := a.opts.Verifier.VerifySubjectToken(ctx, req.GetSubjectToken(), actor)
	if err != nil {
		a.opts.Logger.WarnContext(ctx, "token exchange refused", "actor", actor, "reason", err.Error())
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("subject token is invalid"))
	}
	ttl := min(token.MaxDelegatedTTL, time.Until(user.ExpiresAt).Truncate(time.Second))
	if ttl < time.Second {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("subject token is about to expire"))
	}
	tok, _, err := a.opts.Issuer.Issue(token.Grant{
		Subject:    user.Subject,
		Roles:      user.Roles,
		Scope:      user.Scope,
		Audience:   []string{aud},
		TTL:        ttl,
		CertSHA256: &p.Workload.CertSHA256,
		Actor:      actor,
	})
	if err != nil {
		a.opts.Logger.ErrorContext(ctx, "exchange: issuing the token failed", "error", err)
		return nil, connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	a.opts.Logger.InfoContext(ctx, "token exchanged", "subject", user.Subject, "actor", actor, "audience", aud, "ttl", ttl.String())
	return &userv1.ExchangeTokenResponse{AccessToken: tok, ExpiresIn: int64(ttl / time.Second), TokenType: "Bearer"}, nil
}
