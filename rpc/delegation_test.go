package rpc_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	"github.com/palisade-rpc/palisade/proto/palisade/token/v1/tokenv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
)

const (
	delegationUserID  = "spiffe://palisade.local/svc/user"
	delegationOrderID = "spiffe://palisade.local/svc/order"
)

// countingExchange is the token exchange of the issuer, recording the
// requests it served and the tokens it issued.
type countingExchange struct {
	h        *token.ExchangeHandler
	mu       sync.Mutex
	requests []*tokenv1.ExchangeTokenRequest
	issued   []string
}

func (c *countingExchange) ExchangeToken(ctx context.Context, req *tokenv1.ExchangeTokenRequest) (*tokenv1.ExchangeTokenResponse, error) {
	res, err := c.h.ExchangeToken(ctx, req)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = append(c.requests, req)
	if err == nil {
		c.issued = append(c.issued, res.GetAccessToken())
	}
	return res, err
}

func (c *countingExchange) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.issued)
}

func (c *countingExchange) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.issued[len(c.issued)-1]
}

// revokingVerifier verifies tokens with v, and refuses those revoked (or
// every delegated one once all is set), as the callee refuses a token bound
// to a certificate its presenter no longer has.
type revokingVerifier struct {
	v       *token.Verifier
	mu      sync.Mutex
	revoked map[string]bool
	all     bool
}

func (r *revokingVerifier) Verify(ctx context.Context, raw string, presenter security.Workload) (*security.User, error) {
	r.mu.Lock()
	refused := r.revoked[raw] || r.all
	r.mu.Unlock()
	if refused {
		return nil, &token.Error{Reason: token.ReasonExpired, Detail: "token bound to another certificate"}
	}
	return r.v.Verify(ctx, raw, presenter)
}

func (r *revokingVerifier) revoke(raw string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.revoked[raw] = true
}

type delegationFixture struct {
	ca        *certstest.CA
	srv       *rpctest.Server
	users     *testusers.Service
	exchange  *countingExchange
	verifier  *revokingVerifier
	order     *certs.Issued
	cli       *certs.Issued
	userToken string // alice's, for the order service
}

// newDelegationFixture starts an issuer that serves the token exchange (to
// the order workload only) and user.v1.UserService, verifying tokens with
// its own keys, over mTLS on 127.0.0.1.
func newDelegationFixture(t *testing.T) *delegationFixture {
	t.Helper()
	ca := certstest.NewCA(t)
	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := token.NewIssuer(ks, delegationUserID, token.WithAudience(delegationUserID, delegationOrderID))
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier(delegationUserID, delegationUserID, token.NewStaticKeys(pubs), token.WithCacheSize(0))
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := rpctest.NewLogger(t)
	h, err := token.NewExchangeHandler(issuer, v, []string{delegationUserID}, token.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	f := &delegationFixture{
		ca: ca, users: &testusers.Service{}, exchange: &countingExchange{h: h},
		verifier: &revokingVerifier{v: v, revoked: map[string]bool{}},
		order:    ca.Client("/svc/order"), cli: ca.Client("/client/cli"),
	}
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		tokenv1connect.TokenServiceExchangeTokenProcedure: {Workloads: []string{delegationOrderID}},
		userv1connect.UserServiceGetUserProcedure:         {Workloads: []string{authz.AnyWorkload}},
		userv1connect.UserServiceUpdateUserProcedure:      {Workloads: []string{authz.AnyWorkload}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authorizer, func(s *rpc.Server) error {
		if err := f.users.Mount(s); err != nil {
			return err
		}
		return rpc.Mount(s, tokenv1connect.NewTokenServiceHandler, tokenv1connect.TokenServiceHandler(f.exchange))
	}, rpc.WithTokenVerifier(f.verifier))
	f.userToken, _, err = issuer.Issue(token.Grant{Subject: "alice", Roles: []string{"customer"}, Audience: []string{delegationUserID, delegationOrderID}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// client is a UserService client of the workload as, acting for the users
// of the calls it is made in.
func (f *delegationFixture) client(t *testing.T, as *certs.Issued) userv1connect.UserServiceClient {
	t.Helper()
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(as),
		rpc.WithServerID(delegationUserID), rpc.WithDelegation(f.srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// servingAlice is the context of a call the order service serves for alice.
func (f *delegationFixture) servingAlice() context.Context {
	return security.NewContext(context.Background(), &security.Principal{Token: security.NewSecret(f.userToken)})
}

// TestWithDelegation: a call made while serving a user carries the user's
// token exchanged at the issuer's TokenService for the callee (aud =
// WithServerID's), and the callee sees both identities; the exchanged token
// is reused; a call made for no user carries no token and exchanges nothing.
func TestWithDelegation(t *testing.T) {
	t.Parallel()
	f := newDelegationFixture(t)
	users := f.client(t, f.order)
	for i := range 3 {
		res, err := users.GetUser(f.servingAlice(), &userv1.GetUserRequest{Id: "alice"})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got, want := res.GetUser().GetDisplayName(), delegationOrderID+" acting for alice"; got != want || res.GetUser().GetEmail() != "alice" {
			t.Fatalf("the callee saw %q (subject %q), want %q", got, res.GetUser().GetEmail(), want)
		}
	}
	if n := f.exchange.count(); n != 1 {
		t.Fatalf("%d exchanges for 3 calls, want 1 (the token is cached)", n)
	}
	if aud := f.exchange.requests[0].GetAudience(); aud != delegationUserID {
		t.Fatalf("exchanged for audience %q, want WithServerID's %q", aud, delegationUserID)
	}
	res, err := users.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetUser().GetDisplayName() != delegationOrderID || res.GetUser().GetEmail() != "" {
		t.Fatalf("a call for no user reached the callee as %q for %q", res.GetUser().GetDisplayName(), res.GetUser().GetEmail())
	}
	if n := f.exchange.count(); n != 1 {
		t.Fatalf("a call for no user exchanged a token (%d exchanges)", n)
	}
}

// TestWithDelegationExchangesAgainWhenRefused: a cached delegated token the
// callee refuses is dropped; an idempotent call is made again at once with
// a fresh token (at most twice), a call with side effects is not made again
// but the next call exchanges anew.
func TestWithDelegationExchangesAgainWhenRefused(t *testing.T) {
	t.Parallel()
	f := newDelegationFixture(t)
	users := f.client(t, f.order)
	if _, err := users.GetUser(f.servingAlice(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
		t.Fatal(err)
	}
	f.verifier.revoke(f.exchange.last())
	if _, err := users.GetUser(f.servingAlice(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
		t.Fatalf("GetUser after the cached token was refused: %v", err)
	}
	if n := f.exchange.count(); n != 2 {
		t.Fatalf("%d exchanges, want 2: the refused token exchanged again once", n)
	}

	// UpdateUser has side effects: refused, it is not made again.
	f.verifier.revoke(f.exchange.last())
	_, err := users.UpdateUser(f.servingAlice(), &userv1.UpdateUserRequest{User: &userv1.User{Id: "alice"}})
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("UpdateUser with a refused token: %v, want unauthenticated", err)
	}
	if n := f.exchange.count(); n != 2 {
		t.Fatalf("%d exchanges after a refused UpdateUser, want 2: it is not made again", n)
	}
	if _, err := users.GetUser(f.servingAlice(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
		t.Fatal(err)
	}
	if n := f.exchange.count(); n != 3 {
		t.Fatalf("%d exchanges, want 3: the refused token was dropped", n)
	}

	// Refused every time: 1 + 2 attempts, then the refusal.
	f.verifier.mu.Lock()
	f.verifier.all = true
	f.verifier.mu.Unlock()
	before := f.users.Calls()
	_, err = users.GetUser(f.servingAlice(), &userv1.GetUserRequest{Id: "alice"})
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("GetUser refused every time: %v, want unauthenticated", err)
	}
	if n := f.exchange.count(); n != 5 {
		t.Fatalf("%d exchanges, want 5: two more after the cached token's refusal", n)
	}
	if f.users.Calls() != before {
		t.Fatal("a refused call reached the handler")
	}
}

// TestWithDelegationRefusedToOthers: a workload the issuer's policy does
// not let exchange gets no token, and its call is not sent: it fails
// unauthenticated, saying why, without reaching the callee.
func TestWithDelegationRefusedToOthers(t *testing.T) {
	t.Parallel()
	f := newDelegationFixture(t)
	_, err := f.client(t, f.cli).GetUser(f.servingAlice(), &userv1.GetUserRequest{Id: "alice"})
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "exchange the user's token") ||
		!strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("GetUser from a workload that may not exchange: %v", err)
	}
	if strings.Contains(err.Error(), f.userToken) {
		t.Fatal("the error carries the user's token")
	}
	if f.users.Calls() != 0 || f.exchange.count() != 0 {
		t.Fatalf("%d calls reached the callee, %d tokens issued; want none", f.users.Calls(), f.exchange.count())
	}
}

// TestWithDelegationOptions: the option's misuses fail at NewClient.
func TestWithDelegationOptions(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	src := ca.Source(ca.Client("/svc/order"))
	for name, c := range map[string]struct {
		opts []rpc.ClientOption
		want string
	}{
		"not https":            {[]rpc.ClientOption{rpc.WithDelegation("http://127.0.0.1:1")}, "must be https://host:port"},
		"with a token source":  {[]rpc.ClientOption{rpc.WithDelegation("https://127.0.0.1:1"), rpc.WithTokenSource(func(context.Context) (string, error) { return "", nil })}, "exclude each other"},
		"issuer of another ID": {[]rpc.ClientOption{rpc.WithServerID(delegationUserID), rpc.WithDelegation("https://127.0.0.2:1")}, "not the service this client calls"},
	} {
		_, err := rpc.NewClient(userv1connect.NewUserServiceClient, "https://127.0.0.1:1", src, c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
	}
}
