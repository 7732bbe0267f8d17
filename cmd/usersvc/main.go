// Command usersvc serves the sample user service (user.v1.UserService) and
// the token issuer (user.v1.AuthService, and the JWKS at
// /.well-known/jwks.json) over mTLS: Connect, gRPC and gRPC-Web on one port.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/cmd/internal/svcmain"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/user"
)

const description = `usersvc serves user.v1.UserService and user.v1.AuthService on one TLS port
(Connect, gRPC, gRPC-Web), and the token issuer's public keys at
/.well-known/jwks.json. Every call needs a client certificate signed by --ca
whose SPIFFE ID is in --trust-domain (by default --cert's); a bearer token,
when present, must verify; then the OPA policy decides (embedded defaults,
--policy-dir or --policy-bundle).

Every change to a user is recorded with a sequence number and streamed to
the workloads that cache users (the order service) by WatchUserChanges;
--change-retention and --change-retention-age bound the history kept.

Users are kept in a SQLite file (--db), or in PostgreSQL (--db
postgres://…), which several replicas can share: each serves the change
feed, whichever wrote the change. The demo users alice, bob and admin are
created on first start, with random passwords written to --demo-passwords.
Signing keys are kept in --keys (created on first start, reloaded when
'palisade keys rotate' changes the file).`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "usersvc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("usersvc", flag.ContinueOnError)
	var common svcmain.Flags
	common.Register(fs, "usersvc", "127.0.0.1:8443")
	home := svcmain.DefaultHome
	db := fs.String("db", filepath.Join(home, "users.db"), "SQLite `file` holding the users (created when missing), or a postgres:// URL (keep its password in PGPASSWORD or ~/.pgpass, not on the command line)")
	keys := fs.String("keys", filepath.Join(home, "keys", "signing-keys.json"), "`file` of the token signing keys (mode 0600; created when missing)")
	alg := fs.String("signing-alg", token.DefaultSigningAlg, "`algorithm` of a key created at first start: EdDSA or ES256")
	ttl := fs.Duration("token-ttl", token.DefaultTTL, "`lifetime` of access tokens issued by Login")
	issuer := fs.String("token-issuer", "", "iss of issued tokens (default this service's SPIFFE `ID`)")
	audiences := fs.String("token-audiences", "", "comma-separated aud of access tokens: the `services` that accept them (default spiffe://<trust-domain>/svc/user,spiffe://<trust-domain>/svc/order)")
	demoPasswords := fs.String("demo-passwords", filepath.Join(home, "demo-passwords.json"), "`file` receiving the demo users' random passwords when it does not exist (\"\" to never write one)")
	keyReload := fs.Duration("key-reload-interval", 2*time.Second, "how often to check --keys for a rotation (`duration`)")
	retainChanges := fs.Int("change-retention", user.DefaultRetentionChanges, "keep the newest `N` user changes for WatchUserChanges subscribers (0: no count bound); a subscriber further behind is reset")
	retainAge := fs.Duration("change-retention-age", user.DefaultRetentionAge, "drop user changes older than this `duration` (0: no age bound)")
	heartbeat := fs.Duration("watch-heartbeat", user.DefaultHeartbeatInterval, "send a heartbeat on a caught-up WatchUserChanges stream every `duration`")
	loginChecks := fs.Int("login-checks", 0, "at most `N` logins checking a password at once (argon2id, 64 MiB each); more are refused with resource_exhausted and Retry-After (0: as many as 256 MiB allows, 4)")
	fs.Usage = svcmain.Usage(fs, description)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *loginChecks < 0 {
		return fmt.Errorf("--login-checks %d: must not be negative", *loginChecks)
	}
	retention := user.Retention{MaxChanges: *retainChanges, MaxAge: *retainAge}
	if err := retention.Validate(); err != nil {
		return fmt.Errorf("--change-retention, --change-retention-age: %w", err)
	}
	ctx, base, err := common.Start("usersvc")
	if err != nil {
		return err
	}
	defer base.Stop()
	logger, src := base.Logger, base.Source

	store, err := user.OpenStore(ctx, *db, user.WithStoreLogger(logger))
	if err != nil {
		return err
	}
	defer store.Close()
	if seeded, err := store.SeedDemoUsers(ctx); err != nil {
		return err
	} else if seeded {
		logger.Info("seeded demo users", "db", dbForLog(*db))
	}
	if *demoPasswords != "" {
		if wrote, err := user.EnsureDemoPasswords(ctx, store, *demoPasswords, password.DefaultParams()); err != nil {
			return err
		} else if wrote {
			logger.Info("wrote the demo users' passwords", "file", *demoPasswords)
		}
	}
	authz, err := common.Authorizer(ctx, logger, src, user.Policy(), "embedded services/user/policy")
	if err != nil {
		return err
	}
	tel, err := common.Telemetry("usersvc", logger)
	if err != nil {
		return err
	}
	cfg := user.Config{
		Source:            src,
		Store:             store,
		Authorizer:        authz,
		KeysFile:          *keys,
		SigningAlg:        *alg,
		KeyReloadInterval: *keyReload,
		TokenTTL:          *ttl,
		Issuer:            *issuer,
		ChangeRetention:   retention,
		HeartbeatInterval: *heartbeat,
		Auth:              user.AuthOptions{MaxConcurrentChecks: *loginChecks},
		Logger:            logger,
		ServerOptions:     append(common.ServerOptions(logger), tel.ServerOptions()...),
	}
	if *audiences != "" {
		cfg.Audiences = strings.Split(*audiences, ",")
	}
	srv, err := user.NewServer(ctx, cfg)
	if err != nil {
		return err
	}
	return common.Serve(ctx, srv.Server, tel, logger)
}

// dbForLog is --db as it may be logged: a URL may hold a password.
func dbForLog(db string) string {
	if strings.Contains(db, "://") {
		return "PostgreSQL"
	}
	return db
}
