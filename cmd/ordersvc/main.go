// Command ordersvc serves the sample order service (order.v1.OrderService)
// over mTLS. Before it accepts an order it asks the user service, with its
// own workload certificate, whether the user exists and is active.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/cmd/internal/svcmain"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/order"
)

const description = `ordersvc serves order.v1.OrderService on one TLS port (Connect, gRPC, gRPC-Web).
Every call needs a client certificate signed by --ca whose SPIFFE ID is in
--trust-domain; a bearer token, when present, must verify against the
issuer's keys (fetched from --jwks-url over mTLS); then the call passes the
authorization chain.

CreateOrder calls the user service (--user-service) with this service's own
certificate and, for the user of the call, a delegated token: the caller's
token exchanged at the user service's AuthService.ExchangeToken (sub = the
user, act = this service). Orders are stored in a SQLite file (--db).`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ordersvc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("ordersvc", flag.ContinueOnError)
	var common svcmain.Flags
	common.Register(fs, "ordersvc", "127.0.0.1:9443")
	db := fs.String("db", filepath.Join(svcmain.DefaultHome, "orders.db"), "SQLite `file` holding the orders (created when missing)")
	userURL := fs.String("user-service", "https://127.0.0.1:8443", "base `URL` of the user service")
	userID := fs.String("user-service-id", "", "SPIFFE `ID` the user service must present (default spiffe://<trust-domain>/svc/user)")
	upstreamTimeout := fs.Duration("upstream-timeout", 3*time.Second, "longest `time` a call to the user service may take; past it CreateOrder fails with unavailable")
	jwksURL := fs.String("jwks-url", "", "`URL` of the token issuer's JWKS (default <user-service>/.well-known/jwks.json)")
	issuer := fs.String("token-issuer", "", "iss that tokens must carry (default --user-service-id)")
	jwksRefresh := fs.Duration("jwks-min-refresh", 30*time.Second, "shortest `time` between two JWKS fetches caused by unknown key ids")
	fs.Usage = svcmain.Usage(fs, description)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logger, err := common.Logger("ordersvc")
	if err != nil {
		return err
	}
	src, err := common.Source()
	if err != nil {
		return err
	}
	if *userID == "" {
		*userID = "spiffe://" + common.TrustDomain + "/svc/user"
	}
	if *jwksURL == "" {
		*jwksURL = strings.TrimRight(*userURL, "/") + token.JWKSPath
	}
	if *issuer == "" {
		*issuer = *userID
	}
	self, err := mtls.IdentityOf(src)
	if err != nil {
		return err
	}
	ctx, stop := svcmain.SignalContext()
	defer stop()

	store, err := order.OpenStore(ctx, *db)
	if err != nil {
		return err
	}
	defer store.Close()

	upstream := []rpc.ClientOption{
		rpc.WithServerID(*userID),
		rpc.WithClientTrustDomain(common.TrustDomain),
		rpc.WithCallTimeout(*upstreamTimeout),
	}
	// Tokens: verified with the issuer's keys, fetched over mTLS from the
	// user service and refreshed in the background until shutdown.
	jwksClient, err := rpc.NewHTTPClient(src, upstream...)
	if err != nil {
		return err
	}
	keys := token.NewRemoteKeys(*jwksURL, jwksClient, token.RemoteKeysOptions{MinRefreshInterval: *jwksRefresh, Logger: logger})
	go func() { _ = keys.Run(ctx) }()
	verifier, err := token.NewVerifier(token.VerifierOptions{Issuer: *issuer, Audience: self.String(), Keys: keys})
	if err != nil {
		return err
	}

	// The user service is called for the user of the incoming call, with
	// that user's token exchanged for a delegated one.
	auth, err := rpc.NewClient(userv1connect.NewAuthServiceClient, *userURL, src, upstream...)
	if err != nil {
		return err
	}
	delegator := token.NewDelegator(func(ctx context.Context, subject string) (string, time.Time, error) {
		res, err := auth.ExchangeToken(ctx, &userv1.ExchangeTokenRequest{SubjectToken: subject, Audience: *userID})
		if err != nil {
			return "", time.Time{}, err
		}
		return res.GetAccessToken(), time.Now().Add(time.Duration(res.GetExpiresIn()) * time.Second), nil
	}, token.DelegatorOptions{})
	users, err := rpc.NewClient(userv1connect.NewUserServiceClient, *userURL, src, append(upstream, rpc.WithTokenSource(delegator.Token))...)
	if err != nil {
		return err
	}

	authz, err := allowList(common.TrustDomain)
	if err != nil {
		return err
	}
	srv, err := rpc.NewServer(src, authz, append(common.ServerOptions(logger), rpc.WithTokenVerifier(verifier))...)
	if err != nil {
		return err
	}
	if err := rpc.Mount(srv, orderv1connect.NewOrderServiceHandler, orderv1connect.OrderServiceHandler(order.NewService(store, users, logger))); err != nil {
		return err
	}
	return srv.ListenAndServe(ctx, common.Addr)
}

// allowList is the placeholder authorization: which workloads may call which
// procedure, and which procedures need a user token. The OPA policy engine
// replaces it.
func allowList(td string) (*policy.AllowList, error) {
	clients := policy.Rule{Workloads: []string{"spiffe://" + td + "/client/cli", "spiffe://" + td + "/client/other"}, NeedsUser: true}
	rules := map[string]policy.Rule{
		orderv1connect.OrderServiceCreateOrderProcedure: clients,
		orderv1connect.OrderServiceGetOrderProcedure:    clients,
		orderv1connect.OrderServiceListOrdersProcedure:  clients,
	}
	for _, p := range rpc.BuiltinProcedures() {
		rules[p] = policy.Rule{Workloads: []string{policy.AnyWorkload}}
	}
	return policy.NewAllowList(rules)
}
