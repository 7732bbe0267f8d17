// Command usersvc serves the sample user service (user.v1.UserService) and
// the token issuer (user.v1.AuthService, and the JWKS at
// /.well-known/jwks.json) over mTLS: Connect, gRPC and gRPC-Web on one port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/cmd/internal/svcmain"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/user"
)

const description = `usersvc serves user.v1.UserService and user.v1.AuthService on one TLS port
(Connect, gRPC, gRPC-Web), and the token issuer's public keys at
/.well-known/jwks.json. Every call needs a client certificate signed by --ca
whose SPIFFE ID is in --trust-domain; a bearer token, when present, must
verify; then the call passes the authorization chain.

Users are kept in a SQLite file (--db); the demo users alice, bob and admin
are created on first start, with random passwords written to
--demo-passwords. Signing keys are kept in --keys (created on first start,
reloaded when 'palisade keys rotate' changes the file).`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "usersvc:", err)
		os.Exit(1)
	}
}

type flags struct {
	svcmain.Flags
	db, keys, alg, issuer, audiences, demoPasswords string
	ttl, keyReload                                  time.Duration
}

func run(args []string) error {
	fs := flag.NewFlagSet("usersvc", flag.ContinueOnError)
	var f flags
	f.Register(fs, "usersvc", "127.0.0.1:8443")
	home := svcmain.DefaultHome
	fs.StringVar(&f.db, "db", filepath.Join(home, "users.db"), "SQLite `file` holding the users (created when missing)")
	fs.StringVar(&f.keys, "keys", filepath.Join(home, "keys", "signing-keys.json"), "`file` of the token signing keys (mode 0600; created when missing)")
	fs.StringVar(&f.alg, "signing-alg", token.DefaultSigningAlg, "`algorithm` of a key created at first start: EdDSA or ES256")
	fs.DurationVar(&f.ttl, "token-ttl", token.DefaultTTL, "`lifetime` of access tokens issued by Login")
	fs.StringVar(&f.issuer, "token-issuer", "", "iss of issued tokens (default this service's SPIFFE `ID`)")
	fs.StringVar(&f.audiences, "token-audiences", "", "comma-separated aud of access tokens: the `services` that accept them (default spiffe://<trust-domain>/svc/user,spiffe://<trust-domain>/svc/order)")
	fs.StringVar(&f.demoPasswords, "demo-passwords", filepath.Join(home, "demo-passwords.json"), "`file` receiving the demo users' random passwords when it does not exist (\"\" to never write one)")
	fs.DurationVar(&f.keyReload, "key-reload-interval", 2*time.Second, "how often to check --keys for a rotation (`duration`)")
	fs.Usage = svcmain.Usage(fs, description)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logger, err := f.Logger("usersvc")
	if err != nil {
		return err
	}
	src, err := f.Source()
	if err != nil {
		return err
	}
	self, err := mtls.IdentityOf(src)
	if err != nil {
		return err
	}
	if f.issuer == "" {
		f.issuer = self.String()
	}
	audiences := []string{self.String(), "spiffe://" + f.TrustDomain + "/svc/order"}
	if f.audiences != "" {
		audiences = strings.Split(f.audiences, ",")
	}
	ctx, stop := svcmain.SignalContext()
	defer stop()

	store, err := user.OpenStore(ctx, f.db)
	if err != nil {
		return err
	}
	defer store.Close()
	if seeded, err := store.SeedDemoUsers(ctx); err != nil {
		return err
	} else if seeded {
		logger.Info("seeded demo users", "db", f.db)
	}
	if f.demoPasswords != "" {
		if wrote, err := user.EnsureDemoPasswords(ctx, store, f.demoPasswords, password.DefaultParams()); err != nil {
			return err
		} else if wrote {
			logger.Info("wrote the demo users' passwords", "file", f.demoPasswords)
		}
	}

	keys, err := newKeys(ctx, f, audiences, self.String(), logger)
	if err != nil {
		return err
	}
	checker, err := password.NewChecker(password.DefaultParams())
	if err != nil {
		return err
	}
	auth, err := user.NewAuthService(store, user.AuthOptions{
		Issuer: keys.issuer, Verifier: keys.verifier, Passwords: checker, Audiences: audiences, Logger: logger,
	})
	if err != nil {
		return err
	}

	authz, err := allowList(f.TrustDomain)
	if err != nil {
		return err
	}
	srv, err := rpc.NewServer(src, authz, append(f.ServerOptions(logger), rpc.WithTokenVerifier(keys.verifier))...)
	if err != nil {
		return err
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(user.NewService(store, logger))); err != nil {
		return err
	}
	if err := rpc.Mount(srv, userv1connect.NewAuthServiceHandler, userv1connect.AuthServiceHandler(auth)); err != nil {
		return err
	}
	if err := srv.HandleHTTP(token.JWKSPath, keys.jwks); err != nil {
		return err
	}
	return srv.ListenAndServe(ctx, f.Addr)
}

// issuerKeys keeps the issuer, this service's own verifier and the JWKS in
// step with the signing key file.
type issuerKeys struct {
	issuer   *token.Issuer
	verifier *token.Verifier
	jwks     *token.JWKSHandler
}

func newKeys(ctx context.Context, f flags, audiences []string, self string, logger *slog.Logger) (*issuerKeys, error) {
	ks, created, err := token.LoadOrCreateKeySet(f.keys, f.alg)
	if err != nil {
		return nil, err
	}
	if created {
		logger.Info("created a signing key", "file", f.keys, "kid", ks.Active)
	}
	issuer, err := token.NewIssuer(ks, token.IssuerOptions{Issuer: f.issuer, Audience: audiences, TTL: f.ttl})
	if err != nil {
		return nil, err
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		return nil, err
	}
	static := token.NewStaticKeys(pubs)
	verifier, err := token.NewVerifier(token.VerifierOptions{Issuer: f.issuer, Audience: self, Keys: static})
	if err != nil {
		return nil, err
	}
	k := &issuerKeys{issuer: issuer, verifier: verifier, jwks: &token.JWKSHandler{}}
	if err := k.jwks.Set(pubs); err != nil {
		return nil, err
	}
	go func() {
		_ = token.WatchKeySet(ctx, f.keys, f.keyReload, logger, func(ks *token.KeySet) {
			pubs, err := ks.PublicKeys()
			if err == nil {
				err = issuer.SetKeys(ks)
			}
			if err == nil {
				err = k.jwks.Set(pubs)
			}
			if err != nil {
				logger.Error("applying the reloaded key set failed", "error", err)
				return
			}
			static.Set(pubs)
		})
	}()
	return k, nil
}

// allowList is the placeholder authorization: which workloads may call which
// procedure, and which procedures need a user token. The OPA policy engine
// replaces it.
func allowList(td string) (*policy.AllowList, error) {
	id := func(path string) string { return "spiffe://" + td + path }
	clients := []string{id("/client/cli"), id("/client/other")}
	rules := map[string]policy.Rule{
		userv1connect.UserServiceGetUserProcedure:    {Workloads: append([]string{id("/svc/order")}, clients...), NeedsUser: true},
		userv1connect.UserServiceListUsersProcedure:  {Workloads: clients, NeedsUser: true},
		userv1connect.UserServiceCreateUserProcedure: {Workloads: clients, NeedsUser: true},
		userv1connect.UserServiceUpdateUserProcedure: {Workloads: clients, NeedsUser: true},
		userv1connect.AuthServiceLoginProcedure:      {Workloads: []string{policy.AnyWorkload}},
		// The delegation allow-list: workloads that may act on behalf of users.
		userv1connect.AuthServiceExchangeTokenProcedure: {Workloads: []string{id("/svc/order")}},
	}
	for _, p := range rpc.BuiltinProcedures() {
		rules[p] = policy.Rule{Workloads: []string{policy.AnyWorkload}}
	}
	return policy.NewAllowList(rules)
}
