// Command ordersvc serves the sample order service (order.v1.OrderService)
// over mTLS. Before it accepts an order it asks the user service, with its
// own workload certificate and a token delegated by the caller's user,
// whether the user exists and is active.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/palisade-rpc/palisade/cmd/internal/svcmain"
	"github.com/palisade-rpc/palisade/services/order"
)

const description = `ordersvc serves order.v1.OrderService on one TLS port (Connect, gRPC, gRPC-Web).
Every call needs a client certificate signed by --ca whose SPIFFE ID is in
--trust-domain (by default --cert's); a bearer token, when present, must
verify against the issuer's keys (fetched from --jwks-url over mTLS); then
the OPA policy decides (embedded defaults, --policy-dir or --policy-bundle).

CreateOrder calls the user service (--user-service) with this service's own
certificate and, for the user of the call, a delegated token: the caller's
token exchanged at the user service's AuthService.ExchangeToken (sub = the
user, act = this service). Given several user service replicas
(--user-service https://a:8443,https://b:8443, or a host name with several
addresses and --user-service-dns-refresh), it spreads its calls over them,
sets aside one that fails, and retries a call on another when that is safe:
when the call never left, or when it has no side effects (GetUser, the
JWKS) — never an ExchangeToken that may have been sent. Orders are stored
in a SQLite file (--db), or in PostgreSQL (--db postgres://…), which
several replicas can share.

Users are cached in memory (--user-cache-size), kept fresh by the user
service's change feed (WatchUserChanges), which this service follows as
itself, resuming where it left off after a disconnection, on any replica.
While the feed is down or catching up, the cache is bypassed; a cached user
is never served more than --user-cache-liveness after the feed's last
heartbeat. Run several replicas (different --addr; different SQLite files,
or one PostgreSQL database): each follows the feed.`

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
	db := fs.String("db", filepath.Join(svcmain.DefaultHome, "orders.db"), "SQLite `file` holding the orders (created when missing), or a postgres:// URL (keep its password in PGPASSWORD or ~/.pgpass, not on the command line)")
	userURL := fs.String("user-service", "https://127.0.0.1:8443", "base `URL` of the user service, or of each of its replicas, separated by commas: calls are spread over them, and fail over")
	userDNS := fs.Duration("user-service-dns-refresh", 0, "if set, resolve the host names of --user-service to all their addresses, spread calls over them, and resolve again this often (`duration`; e.g. 30s, for a headless service)")
	userID := fs.String("user-service-id", "", "SPIFFE `ID` the user service must present (default spiffe://<trust-domain>/svc/user)")
	upstreamTimeout := fs.Duration("upstream-timeout", 3*time.Second, "longest `time` a call to the user service may take; past it CreateOrder fails with unavailable")
	jwksURL := fs.String("jwks-url", "", "`URL` of the token issuer's JWKS (default <the first --user-service>/.well-known/jwks.json)")
	issuer := fs.String("token-issuer", "", "iss that tokens must carry (default --user-service-id)")
	jwksRefresh := fs.Duration("jwks-min-refresh", 30*time.Second, "shortest `time` between two JWKS fetches caused by unknown key ids")
	cacheSize := fs.Int("user-cache-size", order.DefaultUserCacheSize, "keep at most `N` users in the user cache, evicting the least recently used")
	cacheMaxAge := fs.Duration("user-cache-max-age", order.DefaultUserCacheMaxAge, "refetch a cached user after this `duration` even if no change to it came")
	cacheLiveness := fs.Duration("user-cache-liveness", order.DefaultUserCacheLiveness, "serve cached users only for this `duration` after the change feed's last heartbeat (the staleness bound when the feed fails silently); a feed silent for as long is reconnected")
	fs.Usage = svcmain.Usage(fs, description)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, base, err := common.Start("ordersvc")
	if err != nil {
		return err
	}
	defer base.Stop()
	logger, src := base.Logger, base.Source

	store, err := order.OpenStore(ctx, *db, order.WithStoreLogger(logger))
	if err != nil {
		return err
	}
	defer store.Close()
	authz, err := common.Authorizer(ctx, logger, src, order.Policy(), "embedded services/order/policy")
	if err != nil {
		return err
	}
	tel, err := common.Telemetry("ordersvc", logger)
	if err != nil {
		return err
	}
	srv, err := order.NewServer(ctx, order.Config{
		Source:          src,
		Store:           store,
		Authorizer:      authz,
		UserURL:         *userURL,
		UserDNSRefresh:  *userDNS,
		UserID:          *userID,
		JWKSURL:         *jwksURL,
		TokenIssuer:     *issuer,
		JWKSMinRefresh:  *jwksRefresh,
		UpstreamTimeout: *upstreamTimeout,
		UserCache:       order.UserCacheOptions{Size: *cacheSize, MaxAge: *cacheMaxAge, Liveness: *cacheLiveness},
		Logger:          logger,
		ServerOptions:   append(common.ServerOptions(logger), tel.ServerOptions()...),
		ClientOptions:   tel.ClientOptions(),
	})
	if err != nil {
		return err
	}
	return common.Serve(ctx, srv.Server, tel, logger)
}
