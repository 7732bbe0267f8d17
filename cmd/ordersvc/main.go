// Command ordersvc serves the sample order service (order.v1.OrderService)
// over mTLS. Before it accepts an order it asks the user service, with its
// own workload certificate, whether the user exists and is active.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/palisade-rpc/palisade/cmd/internal/svcmain"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/services/order"
)

const description = `ordersvc serves order.v1.OrderService on one TLS port (Connect, gRPC, gRPC-Web).
Every call needs a client certificate signed by --ca whose SPIFFE ID is in
--trust-domain, and passes the authorization chain. CreateOrder calls the user
service (--user-service) with this service's own certificate to check the user
before the order is stored in a SQLite file (--db).`

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
	ctx, stop := svcmain.SignalContext()
	defer stop()

	store, err := order.OpenStore(ctx, *db)
	if err != nil {
		return err
	}
	defer store.Close()

	users, err := rpc.NewClient(userv1connect.NewUserServiceClient, *userURL, src,
		rpc.WithServerID(*userID),
		rpc.WithClientTrustDomain(common.TrustDomain),
		rpc.WithCallTimeout(*upstreamTimeout))
	if err != nil {
		return err
	}

	authz, err := allowList(common.TrustDomain)
	if err != nil {
		return err
	}
	srv, err := rpc.NewServer(src, authz, common.ServerOptions(logger)...)
	if err != nil {
		return err
	}
	if err := rpc.Mount(srv, orderv1connect.NewOrderServiceHandler, orderv1connect.OrderServiceHandler(order.NewService(store, users, logger))); err != nil {
		return err
	}
	return srv.ListenAndServe(ctx, common.Addr)
}

// allowList is the placeholder authorization: which workloads may call which
// procedure. The OPA policy engine replaces it.
func allowList(td string) (*policy.AllowList, error) {
	clients := policy.Rule{Workloads: []string{"spiffe://" + td + "/client/cli", "spiffe://" + td + "/client/other"}}
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
