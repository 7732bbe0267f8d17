package user

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
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

// DefaultCheckMemory is the argon2id memory, in bytes, that the password
// checks admitted at once may use by default: AuthOptions.MaxConcurrentChecks
// defaults to it divided by the memory of one check, 4 checks with
// password.DefaultParams' 64 MiB.
const DefaultCheckMemory = 256 << 20

// busyRetry is the Retry-After of a login refused because
// MaxConcurrentChecks logins are checking a password: about one check's
// time.
const busyRetry = time.Second

// AuthOptions configures NewAuthService. Issuer and Passwords are required.
type AuthOptions struct {
	// Issuer signs the tokens Login returns.
	Issuer *token.Issuer
	// Passwords checks passwords (and costs the same for unknown users).
	Passwords *password.Checker
	// FailuresPerUser and FailuresPerPeer within FailureWindow lock out
	// further attempts (defaults 5, 20 and one minute). An attempt counts
	// from before its password is checked until it succeeds, so at most
	// that many are checked for a username or a workload however many
	// arrive at once; a success erases no failure (see package throttle).
	FailuresPerUser, FailuresPerPeer int
	FailureWindow                    time.Duration
	// MaxConcurrentChecks is how many logins may be checking a password
	// at once. A login beyond it is refused at once, resource_exhausted
	// with Retry-After. Of those admitted, at most (GOMAXPROCS-1)/lanes
	// (at least 1) hash at the same time, so that hashes leave a core to
	// the other calls; the others wait their turn, holding no hash memory,
	// and can never be more than MaxConcurrentChecks. The default is as
	// many as fit in DefaultCheckMemory with the parameters of Passwords,
	// at least 1.
	MaxConcurrentChecks int
	Logger              *slog.Logger
}

// AuthService implements user.v1.AuthService: password login. (The token
// exchange is Palisade's, token.ExchangeHandler, mounted beside it.)
type AuthService struct {
	store  *Store
	opts   AuthOptions
	byUser *throttle.Limiter
	byPeer *throttle.Limiter
	// checking holds a token for each login admitted to a password check,
	// hashing or waiting for a hashing slot: at most MaxConcurrentChecks.
	checking chan struct{}
	// hashing holds a token for each password hash running: at most
	// hashSlots.
	hashing chan struct{}
	// admitted, when set (by tests), is called for each login admitted to
	// a password check, before it waits for a hashing slot.
	admitted func(username string)
}

var _ userv1connect.AuthServiceHandler = (*AuthService)(nil)

// NewAuthService returns an AuthService over store.
func NewAuthService(store *Store, opts AuthOptions) (*AuthService, error) {
	if opts.Issuer == nil || opts.Passwords == nil {
		return nil, errors.New("user: auth service needs an issuer and a password checker")
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
	if opts.MaxConcurrentChecks <= 0 {
		opts.MaxConcurrentChecks = DefaultMaxConcurrentChecks(opts.Passwords.Params())
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &AuthService{
		store:    store,
		opts:     opts,
		byUser:   throttle.New(opts.FailuresPerUser, opts.FailureWindow, throttleKeys),
		byPeer:   throttle.New(opts.FailuresPerPeer, opts.FailureWindow, throttleKeys),
		checking: make(chan struct{}, opts.MaxConcurrentChecks),
		hashing:  make(chan struct{}, hashSlots(opts.MaxConcurrentChecks, opts.Passwords.Params(), runtime.GOMAXPROCS(0))),
	}, nil
}

// hashSlots returns how many of checks admitted password checks with
// parameters p may hash at once on procs Ps: as many as keep all but one P
// busy, at least one. A hash keeps p Ps busy for its whole duration (tenths
// of a second); were they all busy, every other call would wait, each time
// it needs a P, for the scheduler to preempt a hash (see
// password.DefaultParams for what that did to GetUser).
func hashSlots(checks int, p password.Params, procs int) int {
	return min(checks, max((procs-1)/max(int(p.Parallelism), 1), 1))
}

// DefaultMaxConcurrentChecks returns the default of
// AuthOptions.MaxConcurrentChecks for password checks with parameters p: as
// many as fit in DefaultCheckMemory, at least 1.
func DefaultMaxConcurrentChecks(p password.Params) int {
	perCheck := max(uint64(p.Memory)*1024, 1)
	return int(max(DefaultCheckMemory/perCheck, 1))
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
	username, peer := req.GetUsername(), p.Workload.ID.String()
	// Take the attempt's throttle slots before the password is checked, so
	// that concurrent attempts cannot all pass before any has failed.
	now := time.Now()
	byUser, retry := a.byUser.Reserve("user:"+username, now)
	if byUser == nil {
		return nil, a.throttled(ctx, username, peer, retry)
	}
	byPeer, retry := a.byPeer.Reserve("peer:"+peer, now)
	if byPeer == nil {
		byUser.Release()
		return nil, a.throttled(ctx, username, peer, retry)
	}
	// Settled as a failure below, once the check has failed; anything else
	// (an error, a success, a refusal) frees both slots.
	defer byUser.Release()
	defer byPeer.Release()

	// Then a place among the logins checking a password, or a refusal:
	// never a queue that grows.
	select {
	case a.checking <- struct{}{}:
		defer func() { <-a.checking }()
	default:
		a.opts.Logger.WarnContext(ctx, "login refused: too many password checks", "username", username, "peer", peer, "max", a.opts.MaxConcurrentChecks)
		return nil, retryLater(busyRetry, "too many logins in progress")
	}
	if a.admitted != nil {
		a.admitted(username)
	}

	hash, u, err := a.store.Credentials(ctx, username)
	if err != nil && !errors.Is(err, ErrNotFound) {
		a.opts.Logger.ErrorContext(ctx, "login: reading credentials failed", "error", err)
		return nil, connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	valid, err := a.check(ctx, req.GetPassword(), hash)
	if err != nil { // the caller gave up waiting
		code := connect.CodeCanceled
		if errors.Is(err, context.DeadlineExceeded) {
			code = connect.CodeDeadlineExceeded
		}
		return nil, connect.NewError(code, err)
	}
	if !valid || u == nil || !u.GetActive() {
		failed := time.Now()
		byUser.Fail(failed)
		byPeer.Fail(failed)
		a.opts.Logger.InfoContext(ctx, "login failed", "username", username, "peer", peer)
		return nil, errLogin
	}

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

// check waits for a hashing slot, unless ctx is done first, and checks
// password against hash. Check runs the same argon2id work whether or not
// the user exists.
func (a *AuthService) check(ctx context.Context, password, hash string) (bool, error) {
	select {
	case a.hashing <- struct{}{}:
	case <-ctx.Done():
		return false, fmt.Errorf("login: waiting to check the password: %w", ctx.Err())
	}
	defer func() { <-a.hashing }()
	return a.opts.Passwords.Check(password, hash), nil
}

// throttled logs a login refused by the failure throttle and returns its
// error.
func (a *AuthService) throttled(ctx context.Context, username, peer string, retry time.Duration) error {
	a.opts.Logger.WarnContext(ctx, "login throttled", "username", username, "peer", peer, "retry_after", retry.String())
	return retryLater(retry, "too many failed logins")
}

// retryLater returns a resource_exhausted error telling the client to retry
// after retry, rounded to whole seconds and at least one, in the message and
// in a Retry-After header.
func retryLater(retry time.Duration, why string) error {
	secs := max(int64(retry.Round(time.Second)/time.Second), 1)
	err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s; retry in %ds", why, secs))
	err.Meta().Set("Retry-After", strconv.FormatInt(secs, 10))
	return err
}
