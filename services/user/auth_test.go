package user_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	"github.com/palisade-rpc/palisade/proto/palisade/token/v1/tokenv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/internal/logrecorder"
	"github.com/palisade-rpc/palisade/services/user"
)

const (
	userID = "spiffe://palisade.local/svc/user"
	// testParams keep argon2id cheap under the race detector; production
	// uses password.DefaultParams.
	alicePassword = "correct horse battery staple"
)

var testParams = password.Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}

// authFixture is a user service with AuthService on loopback, over real mTLS.
type authFixture struct {
	ca       *certstest.CA
	srv      *rpctest.Server
	store    *user.Store
	verifier *token.Verifier
	issuer   *token.Issuer
	cli      *certs.Issued
	other    *certs.Issued
	order    *certs.Issued
	logs     *logrecorder.Recorder
}

func newAuthFixture(t *testing.T, opts user.AuthOptions) *authFixture {
	t.Helper()
	return newAuthFixtureWith(t, fixtureOptions{auth: opts, params: testParams})
}

// fixtureOptions configure newAuthFixtureWith.
type fixtureOptions struct {
	auth user.AuthOptions
	// params are those of the password checker and of alice's and bob's
	// hashes.
	params password.Params
	// admitted, if set, is called for each login admitted to a password
	// check (see AuthService.SetAdmitted).
	admitted func(username string)
}

func newAuthFixtureWith(t *testing.T, fo fixtureOptions) *authFixture {
	t.Helper()
	opts := fo.auth
	ca := certstest.NewCA(t)
	f := &authFixture{ca: ca, cli: ca.Client("/client/cli"), other: ca.Client("/client/other"), order: ca.Server("/svc/order"), logs: logrecorder.New(slog.LevelDebug)}
	logger := slog.New(f.logs)
	ctx := context.Background()
	f.store, _ = openStore(t)
	if _, err := f.store.SeedDemoUsers(ctx); err != nil {
		t.Fatal(err)
	}
	for id, pw := range map[string]string{"alice": alicePassword, "bob": "bob's password"} {
		hash, err := password.Hash(pw, fo.params)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.store.SetPasswordHash(ctx, id, hash); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	audiences := []string{userID, orderID}
	issuer, err := token.NewIssuer(ks, userID, token.WithAudience(audiences...))
	if err != nil {
		t.Fatal(err)
	}
	pubs, _ := ks.PublicKeys()
	f.verifier, err = token.NewVerifier(userID, userID, token.NewStaticKeys(pubs))
	if err != nil {
		t.Fatal(err)
	}
	checker, err := password.NewChecker(fo.params)
	if err != nil {
		t.Fatal(err)
	}
	f.issuer = issuer
	opts.Issuer, opts.Passwords, opts.Logger = issuer, checker, logger
	auth, err := user.NewAuthService(f.store, opts)
	if err != nil {
		t.Fatal(err)
	}
	if fo.admitted != nil {
		auth.SetAdmitted(fo.admitted)
	}
	exchange, err := token.NewExchangeHandler(issuer, f.verifier, audiences, token.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		userv1connect.AuthServiceLoginProcedure:           {Workloads: []string{authz.AnyWorkload}},
		tokenv1connect.TokenServiceExchangeTokenProcedure: {Workloads: []string{orderID}},
		userv1connect.UserServiceGetUserProcedure:         {Workloads: []string{authz.AnyWorkload}, NeedsUser: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authorizer, func(s *rpc.Server) error {
		if err := rpc.Mount(s, userv1connect.NewAuthServiceHandler, userv1connect.AuthServiceHandler(auth)); err != nil {
			return err
		}
		if err := rpc.Mount(s, tokenv1connect.NewTokenServiceHandler, tokenv1connect.TokenServiceHandler(exchange)); err != nil {
			return err
		}
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(user.NewService(f.store, logger)))
	}, rpc.WithTokenVerifier(f.verifier))
	return f
}

func (f *authFixture) tokens(t *testing.T, as *certs.Issued) tokenv1connect.TokenServiceClient {
	t.Helper()
	c, err := rpc.NewClient(tokenv1connect.NewTokenServiceClient, f.srv.URL, f.ca.Source(as))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *authFixture) auth(t *testing.T, as *certs.Issued) userv1connect.AuthServiceClient {
	t.Helper()
	c, err := rpc.NewClient(userv1connect.NewAuthServiceClient, f.srv.URL, f.ca.Source(as))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *authFixture) login(t *testing.T, as *certs.Issued, username, pw string) (*userv1.LoginResponse, error) {
	t.Helper()
	return f.auth(t, as).Login(context.Background(), &userv1.LoginRequest{Username: username, Password: pw})
}

func presenter(t *testing.T, issued *certs.Issued) security.Workload {
	t.Helper()
	w, err := security.WorkloadFromChains([][]*x509.Certificate{{issued.Cert}}, certstest.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestLogin(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t, user.AuthOptions{})
	res, err := f.login(t, f.cli, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetTokenType() != "Bearer" || res.GetExpiresIn() != int64(token.DefaultTTL/time.Second) {
		t.Fatalf("response %v", res)
	}
	u, err := f.verifier.Verify(context.Background(), res.GetAccessToken(), presenter(t, f.cli))
	if err != nil {
		t.Fatal(err)
	}
	if u.Subject != "alice" || !u.HasRole("customer") || !u.CertBound || u.Actor != "" {
		t.Fatalf("token proves %+v", u)
	}
	if _, err := f.verifier.Verify(context.Background(), res.GetAccessToken(), presenter(t, f.other)); token.ReasonOf(err) != token.ReasonBinding {
		t.Fatalf("token from another certificate: %v", err)
	}

	short, err := f.auth(t, f.cli).Login(context.Background(), &userv1.LoginRequest{Username: "alice", Password: alicePassword, TtlSeconds: 60})
	if err != nil || short.GetExpiresIn() != 60 {
		t.Fatalf("ttl 60s: %v %v", short, err)
	}
	long, err := f.auth(t, f.cli).Login(context.Background(), &userv1.LoginRequest{Username: "alice", Password: alicePassword, TtlSeconds: 86400})
	if err != nil || long.GetExpiresIn() != int64(token.DefaultTTL/time.Second) {
		t.Fatalf("ttl 1d must be clamped to the default: %v %v", long, err)
	}
}

// TestLoginFailuresLookAlike: whatever is wrong, the caller learns only
// that the login failed.
func TestLoginFailuresLookAlike(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t, user.AuthOptions{FailuresPerUser: 100, FailuresPerPeer: 100})
	ctx := context.Background()
	if _, err := f.store.Update(ctx, &userv1.User{Id: "bob", Active: false}, []string{"active"}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string][2]string{
		"wrong password":        {"alice", "wrong"},
		"unknown user":          {"mallory", alicePassword},
		"inactive user":         {"bob", "bob's password"},
		"user without password": {"admin", ""},
	} {
		_, err := f.login(t, f.cli, c[0], c[1])
		var cerr *connect.Error
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !asConnect(err, &cerr) || cerr.Message() != "invalid username or password" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestLoginThrottled(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t, user.AuthOptions{FailuresPerUser: 3, FailuresPerPeer: 5, FailureWindow: time.Hour})
	for i := 0; i < 3; i++ {
		if _, err := f.login(t, f.cli, "alice", "guess"); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	// Locked: even the right password is refused, with a retry hint.
	_, err := f.login(t, f.cli, "alice", alicePassword)
	var cerr *connect.Error
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !asConnect(err, &cerr) || cerr.Meta().Get("Retry-After") == "" {
		t.Fatalf("after 3 failures: %v", err)
	}
	// Per peer: two more failures on another username exhaust cli's budget
	// of 5; a different workload can still log in as bob.
	for i := 0; i < 2; i++ {
		if _, err := f.login(t, f.cli, "bob", "guess"); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("bob failure %d: %v", i, err)
		}
	}
	if _, err := f.login(t, f.cli, "bob", "bob's password"); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("cli after 5 failures: %v, want resource_exhausted", err)
	}
	if _, err := f.login(t, f.other, "bob", "bob's password"); err != nil {
		t.Fatalf("another workload: %v", err)
	}
}

func TestExchangeToken(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t, user.AuthOptions{})
	ctx := context.Background()
	login, err := f.login(t, f.cli, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}
	subject := login.GetAccessToken()

	res, err := f.tokens(t, f.order).ExchangeToken(ctx, &tokenv1.ExchangeTokenRequest{SubjectToken: subject})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetExpiresIn() > int64(token.MaxDelegatedTTL/time.Second) || res.GetExpiresIn() < 60 {
		t.Fatalf("delegated lifetime %ds", res.GetExpiresIn())
	}
	u, err := f.verifier.Verify(ctx, res.GetAccessToken(), presenter(t, f.order))
	if err != nil {
		t.Fatal(err)
	}
	if u.Subject != "alice" || u.Actor != orderID || !u.CertBound || !u.HasRole("customer") {
		t.Fatalf("delegated token proves %+v", u)
	}
	// The user service sees both identities when the order service calls it.
	users, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(f.order),
		rpc.WithTokenSource(func(context.Context) (string, error) { return res.GetAccessToken(), nil }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := users.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"}); err != nil {
		t.Fatalf("GetUser with the delegated token: %v", err)
	}
	if reads := f.logs.Find("user read", map[string]string{"caller": orderID, "subject": "alice", "actor": orderID}); len(reads) != 1 {
		t.Fatalf("user read lines with both identities: %v", reads)
	}

	// A delegated token cannot be exchanged again, and a token not meant for
	// the presenting workload cannot be exchanged at all.
	cliHash := sha256.Sum256(f.cli.Cert.Raw)
	userOnly, _, err := f.issuer.Issue(token.Grant{Subject: "alice", Audience: []string{userID}, CertSHA256: &cliHash})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		as      *certs.Issued
		subject string
		code    connect.Code
	}{
		"delegated token":             {f.order, res.GetAccessToken(), connect.CodeUnauthenticated},
		"token without the actor aud": {f.order, userOnly, connect.CodeUnauthenticated},
		"garbage":                     {f.order, "not.a.token", connect.CodeUnauthenticated},
		"workload not allowed":        {f.cli, subject, connect.CodePermissionDenied},
	} {
		_, err := f.tokens(t, c.as).ExchangeToken(ctx, &tokenv1.ExchangeTokenRequest{SubjectToken: c.subject})
		if connect.CodeOf(err) != c.code {
			t.Errorf("%s: %v, want %v", name, err, c.code)
		}
	}
	if _, err := f.tokens(t, f.cli).ExchangeToken(ctx, &tokenv1.ExchangeTokenRequest{SubjectToken: subject}); err == nil ||
		!strings.Contains(err.Error(), "may not call") {
		t.Errorf("cli exchanging: %v", err)
	}
}

func asConnect(err error, target **connect.Error) bool { return errors.As(err, target) }

// gate holds password checks in flight: the hook it returns (for
// fixtureOptions.checking) counts each check and blocks it until
// releaseRest — or, for the first check of a gate made with holdFirst, until
// releaseFirst. Both are released when the test ends, so that a failed test
// does not leave calls hanging.
type gate struct {
	checks                    atomic.Int64
	holdFirst                 bool
	first, rest               chan struct{}
	releaseFirst, releaseRest func()
}

func newGate(t *testing.T, holdFirst bool) *gate {
	g := &gate{holdFirst: holdFirst, first: make(chan struct{}), rest: make(chan struct{})}
	g.releaseFirst = sync.OnceFunc(func() { close(g.first) })
	g.releaseRest = sync.OnceFunc(func() { close(g.rest) })
	t.Cleanup(g.releaseFirst)
	t.Cleanup(g.releaseRest)
	return g
}

func (g *gate) hook(string) {
	if g.checks.Add(1) == 1 && g.holdFirst {
		<-g.first
	} else {
		<-g.rest
	}
}

// outcomes collects the answers of concurrent calls.
type outcomes struct {
	mu   sync.Mutex
	errs []error
}

func (o *outcomes) add(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.errs = append(o.errs, err)
}

func (o *outcomes) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.errs)
}

// count returns how many answers had code (0 for success), and checks that
// every resource_exhausted one carries a Retry-After of 1 to maxRetry
// seconds.
func (o *outcomes) count(t *testing.T, code connect.Code, maxRetry int) int {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, err := range o.errs {
		if connect.CodeOf(err) != code && !(code == 0 && err == nil) {
			continue
		}
		n++
		if code == connect.CodeResourceExhausted {
			checkRetryAfter(t, err, maxRetry)
		}
	}
	return n
}

// checkRetryAfter checks that err carries a Retry-After header of 1 to
// maxRetry seconds.
func checkRetryAfter(t *testing.T, err error, maxRetry int) {
	t.Helper()
	var cerr *connect.Error
	if !asConnect(err, &cerr) {
		t.Fatalf("%v is not a connect error", err)
	}
	secs, perr := strconv.Atoi(cerr.Meta().Get("Retry-After"))
	if perr != nil || secs < 1 || secs > maxRetry {
		t.Errorf("%v: Retry-After %q, want 1 to %d seconds", err, cerr.Meta().Get("Retry-After"), maxRetry)
	}
}

// guess sends n concurrent wrong-password logins as the workload of
// issued, the i-th for username(i), and adds their answers to o as they
// arrive.
func (f *authFixture) guess(t *testing.T, o *outcomes, as *certs.Issued, n int, username func(i int) string) {
	t.Helper()
	client := f.auth(t, as)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := client.Login(context.Background(), &userv1.LoginRequest{Username: username(i), Password: "guess"})
			o.add(err)
		})
	}
	t.Cleanup(wg.Wait)
}

// TestLoginConcurrentGuessesForOneUser is issue 13's reproduction: 30
// wrong guesses for bob at once from one workload, while bob logs in with
// the right password from another. Attempts take their throttle slot
// before the password is checked, so 5 are checked — bob's and 4 guesses —
// and the other 26 are refused at once with Retry-After; and bob's success,
// whether it settles before or after the guesses, erases none of their
// failures.
func TestLoginConcurrentGuessesForOneUser(t *testing.T) {
	t.Parallel()
	for name, bobFirst := range map[string]bool{"bob settles first": true, "guesses settle first": false} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			g := newGate(t, true)
			f := newAuthFixtureWith(t, fixtureOptions{params: testParams, admitted: g.hook})
			attacker := f.ca.Client("/client/attacker")

			bob, bobClient := make(chan error, 1), f.auth(t, f.cli)
			go func() {
				_, err := bobClient.Login(context.Background(), &userv1.LoginRequest{Username: "bob", Password: "bob's password"})
				bob <- err
			}()
			rpctest.WaitFor(t, "bob's check", func() bool { return g.checks.Load() == 1 })
			guesses := &outcomes{}
			f.guess(t, guesses, attacker, 30, func(int) string { return "bob" })
			// Every guess is either answered or held in its check.
			rpctest.WaitFor(t, "the guesses", func() bool { return guesses.len()+int(g.checks.Load())-1 == 30 })
			if n := g.checks.Load(); n != user.DefaultFailuresPerUser {
				t.Fatalf("%d attempts checked at once (bob's and %d guesses), want %d", n, n-1, user.DefaultFailuresPerUser)
			}
			if n := guesses.count(t, connect.CodeResourceExhausted, 60); n != 26 {
				t.Fatalf("%d guesses refused, want 26; answers %v", n, guesses.errs)
			}

			settleBob := func() {
				g.releaseFirst()
				if err := <-bob; err != nil {
					t.Fatalf("bob's login: %v", err)
				}
			}
			settleGuesses := func() {
				g.releaseRest()
				rpctest.WaitFor(t, "the checked guesses", func() bool { return guesses.len() == 30 })
				if n := guesses.count(t, connect.CodeUnauthenticated, 0); n != 4 {
					t.Fatalf("%d guesses failed, want 4", n)
				}
			}
			if bobFirst {
				settleBob()
				settleGuesses()
			} else {
				settleGuesses()
				settleBob()
			}

			// Four failures stay recorded: one more guess is checked, and
			// then bob is locked out, even with the right password.
			if _, err := f.login(t, attacker, "bob", "guess"); connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("the fifth failure: %v, want unauthenticated", err)
			}
			_, err := f.login(t, f.cli, "bob", "bob's password")
			if connect.CodeOf(err) != connect.CodeResourceExhausted {
				t.Fatalf("bob after 5 failures: %v, want resource_exhausted", err)
			}
			checkRetryAfter(t, err, 60)
			if failed := f.logs.Find("login failed", map[string]string{"username": "bob"}); len(failed) != 5 {
				t.Errorf("%d 'login failed' lines for bob, want 5", len(failed))
			}
		})
	}
}

// TestLoginConcurrentGuessesFromOneWorkload: 30 guesses at once for 30
// usernames from one workload: 20 are checked, 10 refused at once; then
// that workload is locked out and another is not.
func TestLoginConcurrentGuessesFromOneWorkload(t *testing.T) {
	t.Parallel()
	g := newGate(t, false)
	f := newAuthFixtureWith(t, fixtureOptions{params: testParams, admitted: g.hook})
	attacker := f.ca.Client("/client/attacker")
	guesses := &outcomes{}
	f.guess(t, guesses, attacker, 30, func(i int) string { return fmt.Sprint("user-", i) })
	rpctest.WaitFor(t, "the guesses", func() bool { return guesses.len()+int(g.checks.Load()) == 30 })
	if n := g.checks.Load(); n != user.DefaultFailuresPerPeer {
		t.Fatalf("%d guesses checked at once, want %d", n, user.DefaultFailuresPerPeer)
	}
	if n := guesses.count(t, connect.CodeResourceExhausted, 60); n != 10 {
		t.Fatalf("%d guesses refused, want 10; answers %v", n, guesses.errs)
	}
	g.releaseRest()
	rpctest.WaitFor(t, "the checked guesses", func() bool { return guesses.len() == 30 })
	if n := guesses.count(t, connect.CodeUnauthenticated, 0); n != 20 {
		t.Fatalf("%d guesses failed, want 20", n)
	}
	_, err := f.login(t, attacker, "alice", alicePassword)
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("the attacker after 20 failures: %v, want resource_exhausted", err)
	}
	checkRetryAfter(t, err, 60)
	if _, err := f.login(t, f.cli, "alice", alicePassword); err != nil {
		t.Fatalf("another workload: %v", err)
	}
}

// TestLoginChecksBeyondTheLimitAreRefused: with MaxConcurrentChecks checks
// running, another login is refused at once — resource_exhausted with
// Retry-After: 1, not queued — without a check and without spending a
// throttle slot.
func TestLoginChecksBeyondTheLimitAreRefused(t *testing.T) {
	t.Parallel()
	g := newGate(t, false)
	f := newAuthFixtureWith(t, fixtureOptions{
		auth:     user.AuthOptions{MaxConcurrentChecks: 2, FailuresPerUser: 1, FailuresPerPeer: 1},
		params:   testParams,
		admitted: g.hook,
	})
	// Two workloads, one guess each, so that neither is throttled.
	held := &outcomes{}
	f.guess(t, held, f.ca.Client("/client/attacker-1"), 1, func(int) string { return "mallory-1" })
	f.guess(t, held, f.ca.Client("/client/attacker-2"), 1, func(int) string { return "mallory-2" })
	rpctest.WaitFor(t, "two checks", func() bool { return g.checks.Load() == 2 })

	start := time.Now()
	_, err := f.login(t, f.cli, "alice", alicePassword)
	var cerr *connect.Error
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !asConnect(err, &cerr) ||
		cerr.Meta().Get("Retry-After") != "1" || !strings.Contains(cerr.Message(), "too many logins in progress") {
		t.Fatalf("a third login while two checks run: %v, want resource_exhausted with Retry-After: 1", err)
	}
	if n := g.checks.Load(); n != 2 {
		t.Fatalf("%d checks, want 2: the refused login was checked", n)
	}
	t.Logf("refused in %v", time.Since(start))

	g.releaseRest()
	rpctest.WaitFor(t, "the held checks", func() bool { return held.len() == 2 })
	// One failure each would lock alice and cli out: the refusal recorded
	// none and released its slots.
	if _, err := f.login(t, f.cli, "alice", alicePassword); err != nil {
		t.Fatalf("alice once the checks ended: %v", err)
	}
	if n := held.count(t, connect.CodeUnauthenticated, 0); n != 2 {
		t.Fatalf("%d held guesses failed, want 2", n)
	}
}
