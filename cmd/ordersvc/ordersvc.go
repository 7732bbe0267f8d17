package main

import (
	"flag"
	"path/filepath"
	"time"

	"github.com/palisade-rpc/palisade/kit"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/services/order"
)

const description = `ordersvc serves order.v1.OrderService on one TLS port (Connect, gRPC, gRPC-Web).
Every call needs a client certificate signed by --ca (or the SPIFFE Workload
API's bundle, --spiffe-socket) whose SPIFFE ID is in --trust-domain (by
default its own certificate's); a bearer token, when present, must verify
against the issuer's keys (fetched from --jwks-url over mTLS); then the OPA
policy decides (Palisade's base policy and this service's layer: the
embedded one, --policy-dir or --policy-bundle; --policy-data).

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

// ordersvc is the order service as the kit runs it: its flags, and the
// service built from them.
type ordersvc struct {
	db, userURL, userID, jwksURL, issuer  string
	userDNS, upstreamTimeout, jwksRefresh time.Duration
	cacheSize                             int
	cacheMaxAge, cacheLiveness            time.Duration

	srv *order.Server
}

// define defines ordersvc's own flags.
func (o *ordersvc) define(fs *flag.FlagSet) {
	fs.StringVar(&o.db, "db", filepath.Join(kit.DefaultHome, "orders.db"), "SQLite `file` holding the orders (created when missing), or a postgres:// URL (keep its password in PGPASSWORD or ~/.pgpass, not on the command line)")
	fs.StringVar(&o.userURL, "user-service", "https://127.0.0.1:8443", "base `URL` of the user service, or of each of its replicas, separated by commas: calls are spread over them, and fail over")
	fs.DurationVar(&o.userDNS, "user-service-dns-refresh", 0, "if set, resolve the host names of --user-service to all their addresses, spread calls over them, and resolve again this often (`duration`; e.g. 30s, for a headless service)")
	fs.StringVar(&o.userID, "user-service-id", "", "SPIFFE `ID` the user service must present (default spiffe://<trust-domain>/svc/user)")
	fs.DurationVar(&o.upstreamTimeout, "upstream-timeout", 3*time.Second, "longest `time` a call to the user service may take; past it CreateOrder fails with unavailable")
	fs.StringVar(&o.jwksURL, "jwks-url", "", "`URL` of the token issuer's JWKS (default <the first --user-service>/.well-known/jwks.json)")
	fs.StringVar(&o.issuer, "token-issuer", "", "iss that tokens must carry (default --user-service-id)")
	fs.DurationVar(&o.jwksRefresh, "jwks-min-refresh", 30*time.Second, "shortest `time` between two JWKS fetches caused by unknown key ids")
	fs.IntVar(&o.cacheSize, "user-cache-size", order.DefaultUserCacheSize, "keep at most `N` users in the user cache, evicting the least recently used")
	fs.DurationVar(&o.cacheMaxAge, "user-cache-max-age", order.DefaultUserCacheMaxAge, "refetch a cached user after this `duration` even if no change to it came")
	fs.DurationVar(&o.cacheLiveness, "user-cache-liveness", order.DefaultUserCacheLiveness, "serve cached users only for this `duration` after the change feed's last heartbeat (the staleness bound when the feed fails silently); a feed silent for as long is reconnected")
}

// build opens the store and builds the service, before the kit builds the
// server: the server verifies tokens with the keys the service fetches.
func (o *ordersvc) build(s *kit.Service) (rpc.TokenVerifier, error) {
	store, err := order.OpenStore(s.Context(), o.db, order.WithStoreLogger(s.Logger))
	if err != nil {
		return nil, err
	}
	s.Cleanup(store.Close)
	o.srv, err = order.New(order.Config{
		Source:          s.Source,
		Store:           store,
		UserURL:         o.userURL,
		UserDNSRefresh:  o.userDNS,
		UserID:          o.userID,
		JWKSURL:         o.jwksURL,
		TokenIssuer:     o.issuer,
		JWKSMinRefresh:  o.jwksRefresh,
		UpstreamTimeout: o.upstreamTimeout,
		UserCache:       order.UserCacheOptions{Size: o.cacheSize, MaxAge: o.cacheMaxAge, Liveness: o.cacheLiveness},
		Logger:          s.Logger,
		ClientOptions:   s.ClientOptions(),
	})
	if err != nil {
		return nil, err
	}
	return o.srv.Verifier, nil
}

// setup mounts the service on the kit's server and starts its loops.
func (o *ordersvc) setup(s *kit.Service) error {
	if err := o.srv.Mount(s.Server); err != nil {
		return err
	}
	for _, l := range o.srv.Loops {
		s.Go(l.Name, l.Run)
	}
	return nil
}
