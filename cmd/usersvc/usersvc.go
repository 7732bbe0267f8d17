package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/kit"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/user"
)

const description = `usersvc serves user.v1.UserService and user.v1.AuthService on one TLS port
(Connect, gRPC, gRPC-Web), and the token issuer's public keys at
/.well-known/jwks.json. Every call needs a client certificate signed by --ca
(or the SPIFFE Workload API's bundle, --spiffe-socket) whose SPIFFE ID is in
--trust-domain (by default its own certificate's); a bearer token, when
present, must verify with this service's own keys; then the OPA policy
decides (Palisade's base policy and this service's layer: the embedded
one, --policy-dir or --policy-bundle; --policy-data).

Every change to a user is recorded with a sequence number and streamed to
the workloads that cache users (the order service) by WatchUserChanges;
--change-retention and --change-retention-age bound the history kept.

Users are kept in a SQLite file (--db), or in PostgreSQL (--db
postgres://…), which several replicas can share: each serves the change
feed, whichever wrote the change. The demo users alice, bob and admin are
created on first start, with random passwords written to --demo-passwords.
Signing keys are kept in --keys (created on first start, reloaded when
'palisade keys rotate' changes the file).`

// usersvc is the user service as the kit runs it: its flags, and the
// service built from them.
type usersvc struct {
	db, keys, alg, issuer, audiences, demoPasswords string
	ttl, keyReload, retainAge, heartbeat            time.Duration
	retainChanges, loginChecks                      int

	srv *user.Server
}

// define defines usersvc's own flags.
func (u *usersvc) define(fs *flag.FlagSet) {
	home := kit.DefaultHome
	fs.StringVar(&u.db, "db", filepath.Join(home, "users.db"), "SQLite `file` holding the users (created when missing), or a postgres:// URL (keep its password in PGPASSWORD or ~/.pgpass, not on the command line)")
	fs.StringVar(&u.keys, "keys", filepath.Join(home, "keys", "signing-keys.json"), "`file` of the token signing keys (mode 0600; created when missing)")
	fs.StringVar(&u.alg, "signing-alg", token.DefaultSigningAlg, "`algorithm` of a key created at first start: EdDSA or ES256")
	fs.DurationVar(&u.ttl, "token-ttl", token.DefaultTTL, "`lifetime` of access tokens issued by Login")
	fs.StringVar(&u.issuer, "token-issuer", "", "iss of issued tokens (default this service's SPIFFE `ID`)")
	fs.StringVar(&u.audiences, "token-audiences", "", "comma-separated aud of access tokens: the `services` that accept them (default spiffe://<trust-domain>/svc/user,spiffe://<trust-domain>/svc/order)")
	fs.StringVar(&u.demoPasswords, "demo-passwords", filepath.Join(home, "demo-passwords.json"), "`file` receiving the demo users' random passwords when it does not exist (\"\" to never write one)")
	fs.DurationVar(&u.keyReload, "key-reload-interval", 2*time.Second, "how often to check --keys for a rotation (`duration`)")
	fs.IntVar(&u.retainChanges, "change-retention", user.DefaultRetentionChanges, "keep the newest `N` user changes for WatchUserChanges subscribers (0: no count bound); a subscriber further behind is reset")
	fs.DurationVar(&u.retainAge, "change-retention-age", user.DefaultRetentionAge, "drop user changes older than this `duration` (0: no age bound)")
	fs.DurationVar(&u.heartbeat, "watch-heartbeat", user.DefaultHeartbeatInterval, "send a heartbeat on a caught-up WatchUserChanges stream every `duration`")
	fs.IntVar(&u.loginChecks, "login-checks", 0, "at most `N` logins checking a password at once (argon2id, 64 MiB each); more are refused with resource_exhausted and Retry-After (0: as many as 256 MiB allows, 4)")
}

// build opens the store and builds the service, before the kit builds the
// server: the server verifies tokens with the service's own keys.
func (u *usersvc) build(s *kit.Service) (rpc.TokenVerifier, error) {
	if u.loginChecks < 0 {
		return nil, fmt.Errorf("--login-checks %d: must not be negative", u.loginChecks)
	}
	retention := user.Retention{MaxChanges: u.retainChanges, MaxAge: u.retainAge}
	if err := retention.Validate(); err != nil {
		return nil, fmt.Errorf("--change-retention, --change-retention-age: %w", err)
	}
	ctx, logger := s.Context(), s.Logger
	store, err := user.OpenStore(ctx, u.db, user.WithStoreLogger(logger))
	if err != nil {
		return nil, err
	}
	s.Cleanup(store.Close)
	if seeded, err := store.SeedDemoUsers(ctx); err != nil {
		return nil, err
	} else if seeded {
		logger.Info("seeded demo users", "db", dbForLog(u.db))
	}
	if u.demoPasswords != "" {
		if wrote, err := user.EnsureDemoPasswords(ctx, store, u.demoPasswords, password.DefaultParams()); err != nil {
			return nil, err
		} else if wrote {
			logger.Info("wrote the demo users' passwords", "file", u.demoPasswords)
		}
	}
	cfg := user.Config{
		Source:            s.Source,
		Store:             store,
		KeysFile:          u.keys,
		SigningAlg:        u.alg,
		KeyReloadInterval: u.keyReload,
		TokenTTL:          u.ttl,
		Issuer:            u.issuer,
		ChangeRetention:   retention,
		HeartbeatInterval: u.heartbeat,
		Auth:              user.AuthOptions{MaxConcurrentChecks: u.loginChecks},
		Logger:            logger,
	}
	if u.audiences != "" {
		cfg.Audiences = strings.Split(u.audiences, ",")
	}
	if u.srv, err = user.New(cfg); err != nil {
		return nil, err
	}
	return u.srv.Verifier, nil
}

// setup mounts the service on the kit's server and starts its loops.
func (u *usersvc) setup(s *kit.Service) error {
	if err := u.srv.Mount(s.Server); err != nil {
		return err
	}
	for _, l := range u.srv.Loops {
		s.Go(l.Name, l.Run)
	}
	return nil
}

// dbForLog is --db as it may be logged: a URL may hold a password.
func dbForLog(db string) string {
	if strings.Contains(db, "://") {
		return "PostgreSQL"
	}
	return db
}
