// Command usersvc serves the sample user service (user.v1.UserService) over
// mTLS: Connect, gRPC and gRPC-Web on one port.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/palisade-rpc/palisade/cmd/internal/svcmain"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/services/user"
)

const description = `usersvc serves user.v1.UserService on one TLS port (Connect, gRPC, gRPC-Web).
Every call needs a client certificate signed by --ca whose SPIFFE ID is in
--trust-domain, and passes the authorization chain. Users are kept in a SQLite
file (--db); the demo users alice, bob and admin are created on first start.`

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
	db := fs.String("db", filepath.Join(svcmain.DefaultHome, "users.db"), "SQLite `file` holding the users (created when missing)")
	fs.Usage = svcmain.Usage(fs, description)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logger, err := common.Logger("usersvc")
	if err != nil {
		return err
	}
	src, err := common.Source()
	if err != nil {
		return err
	}
	ctx, stop := svcmain.SignalContext()
	defer stop()

	store, err := user.OpenStore(ctx, *db)
	if err != nil {
		return err
	}
	defer store.Close()
	if seeded, err := store.SeedDemoUsers(ctx); err != nil {
		return err
	} else if seeded {
		logger.Info("seeded demo users", "db", *db)
	}

	authz, err := allowList(common.TrustDomain)
	if err != nil {
		return err
	}
	srv, err := rpc.NewServer(src, authz, common.ServerOptions(logger)...)
	if err != nil {
		return err
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(user.NewService(store, logger))); err != nil {
		return err
	}
	return srv.ListenAndServe(ctx, common.Addr)
}

// allowList is the placeholder authorization: which workloads may call which
// procedure. The OPA policy engine replaces it.
func allowList(td string) (*policy.AllowList, error) {
	id := func(path string) string { return "spiffe://" + td + path }
	rules := map[string]policy.Rule{
		userv1connect.UserServiceGetUserProcedure:    {Workloads: []string{id("/svc/order"), id("/client/cli"), id("/client/other")}},
		userv1connect.UserServiceListUsersProcedure:  {Workloads: []string{id("/client/cli")}},
		userv1connect.UserServiceCreateUserProcedure: {Workloads: []string{id("/client/cli")}},
		userv1connect.UserServiceUpdateUserProcedure: {Workloads: []string{id("/client/cli")}},
	}
	for _, p := range rpc.BuiltinProcedures() {
		rules[p] = policy.Rule{Workloads: []string{policy.AnyWorkload}}
	}
	return policy.NewAllowList(rules)
}
