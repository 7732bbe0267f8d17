package user_test

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
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
	ca := certstest.NewCA(t)
	f := &authFixture{ca: ca, cli: ca.Client("/client/cli"), other: ca.Client("/client/other"), order: ca.Server("/svc/order"), logs: logrecorder.New(slog.LevelDebug)}
	logger := slog.New(f.logs)
	ctx := context.Background()
	f.store, _ = openStore(t)
	if _, err := f.store.SeedDemoUsers(ctx); err != nil {
		t.Fatal(err)
	}
	for id, pw := range map[string]string{"alice": alicePassword, "bob": "bob's password"} {
		hash, err := password.Hash(pw, testParams)
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
	issuer, err := token.NewIssuer(ks, token.IssuerOptions{Issuer: userID, Audience: audiences})
	if err != nil {
		t.Fatal(err)
	}
	pubs, _ := ks.PublicKeys()
	f.verifier, err = token.NewVerifier(token.VerifierOptions{Issuer: userID, Audience: userID, Keys: token.NewStaticKeys(pubs)})
	if err != nil {
		t.Fatal(err)
	}
	checker, err := password.NewChecker(testParams)
	if err != nil {
		t.Fatal(err)
	}
	f.issuer = issuer
	opts.Issuer, opts.Verifier, opts.Passwords, opts.Audiences, opts.Logger = issuer, f.verifier, checker, audiences, logger
	auth, err := user.NewAuthService(f.store, opts)
	if err != nil {
		t.Fatal(err)
	}
	authz, err := policy.NewAllowList(map[string]policy.Rule{
		userv1connect.AuthServiceLoginProcedure:         {Workloads: []string{policy.AnyWorkload}},
		userv1connect.AuthServiceExchangeTokenProcedure: {Workloads: []string{orderID}},
		userv1connect.UserServiceGetUserProcedure:       {Workloads: []string{policy.AnyWorkload}, NeedsUser: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authz, func(s *rpc.Server) error {
		if err := rpc.Mount(s, userv1connect.NewAuthServiceHandler, userv1connect.AuthServiceHandler(auth)); err != nil {
			return err
		}
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(user.NewService(f.store, logger)))
	}, rpc.WithTokenVerifier(f.verifier))
	return f
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

	res, err := f.auth(t, f.order).ExchangeToken(ctx, &userv1.ExchangeTokenRequest{SubjectToken: subject})
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
	cliHash := certs.Fingerprint(f.cli.Cert)
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
		_, err := f.auth(t, c.as).ExchangeToken(ctx, &userv1.ExchangeTokenRequest{SubjectToken: c.subject})
		if connect.CodeOf(err) != c.code {
			t.Errorf("%s: %v, want %v", name, err, c.code)
		}
	}
	if _, err := f.auth(t, f.cli).ExchangeToken(ctx, &userv1.ExchangeTokenRequest{SubjectToken: subject}); err == nil ||
		!strings.Contains(err.Error(), "may not call") {
		t.Errorf("cli exchanging: %v", err)
	}
}

func asConnect(err error, target **connect.Error) bool { return errors.As(err, target) }
