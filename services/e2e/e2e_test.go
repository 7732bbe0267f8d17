// Package e2e_test runs both sample services in process, over real mTLS on
// loopback, with real tokens and their own policy layers, and checks what
// every principal gets from every procedure.
package e2e_test

import (
	"context"
	"io/fs"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	"github.com/palisade-rpc/palisade/proto/palisade/token/v1/tokenv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/user"
	"github.com/palisade-rpc/palisade/telemetry"
)

var fastHashes = password.Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}

var passwords = map[string]string{"alice": "alice's password", "bob": "bob's password", "admin": "admin's password"}

// System is both services running with the default policies, traced and
// metered as the binaries are with --trace-stdout and --admin-addr.
type System struct {
	CA        *certstest.CA
	Users     *rpctest.Server
	Orders    *rpctest.Server
	UserLogs  *rpctest.Logs
	OrderLogs *rpctest.Logs
	Certs     map[string]*certs.Issued // cli, order, intruder, user (the user service's)
	// Spans receives the spans of both services.
	Spans *tracetest.InMemoryExporter
	// UserTelemetry and OrderTelemetry are the services' providers.
	UserTelemetry, OrderTelemetry *telemetry.Telemetry
	// UserPolicy and OrderPolicy are the services' policy engines: the base
	// policy and each service's own layer.
	UserPolicy, OrderPolicy *policy.Engine
}

// Start runs the user and order services until the test ends. Each of
// extra adds a telemetry option to both services', given the test CA, the
// service's name and its certificate source.
func Start(t *testing.T, extra ...func(ca *certstest.CA, service string, src mtls.Source) telemetry.Option) *System {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ca := certstest.NewCA(t)
	s := &System{CA: ca, Certs: map[string]*certs.Issued{
		"cli": ca.Client("/client/cli"), "order": ca.Server("/svc/order"), "intruder": ca.Server("/svc/intruder"),
		"user": ca.Server("/svc/user"),
	}, Spans: tracetest.NewInMemoryExporter()}
	var err error
	for name, tel := range map[string]**telemetry.Telemetry{"usersvc": &s.UserTelemetry, "ordersvc": &s.OrderTelemetry} {
		opts := []telemetry.Option{telemetry.WithSpanExporter(s.Spans), telemetry.WithMetrics()}
		for _, f := range extra {
			opts = append(opts, f(ca, name, ca.Source(s.Certs[strings.TrimSuffix(name, "svc")])))
		}
		if *tel, err = telemetry.New(name, opts...); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = (*tel).Shutdown(context.Background()) })
	}

	users, err := user.OpenStore(ctx, t.TempDir()+"/users.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = users.Close() })
	if _, err := users.SeedDemoUsers(ctx); err != nil {
		t.Fatal(err)
	}
	for id, pw := range passwords {
		hash, err := password.Hash(pw, fastHashes)
		if err != nil {
			t.Fatal(err)
		}
		if err := users.SetPasswordHash(ctx, id, hash); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	userLogger, userLogs := rpctest.NewLogger(t)
	s.UserPolicy = engine(t, user.Policy(), userLogger)
	userSrv, err := user.NewServer(user.Config{
		Source: ca.Source(s.Certs["user"]), Store: users, Authorizer: s.UserPolicy,
		Keys: keys, PasswordParams: &fastHashes, Logger: userLogger,
		ServerOptions: s.UserTelemetry.ServerOptions(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runLoops(t, ctx, userSrv.Run)
	s.Users, s.UserLogs = rpctest.Serve(t, userSrv.Server, userLogs), userLogs

	orders, err := order.OpenStore(ctx, t.TempDir()+"/orders.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orders.Close() })
	orderLogger, orderLogs := rpctest.NewLogger(t)
	s.OrderPolicy = engine(t, order.Policy(), orderLogger)
	orderSrv, err := order.NewServer(order.Config{
		Source: ca.Source(s.Certs["order"]), Store: orders, Authorizer: s.OrderPolicy,
		UserURL: s.Users.URL, Logger: orderLogger,
		ServerOptions: s.OrderTelemetry.ServerOptions(), ClientOptions: s.OrderTelemetry.ClientOptions(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runLoops(t, ctx, orderSrv.Run)
	s.Orders, s.OrderLogs = rpctest.Serve(t, orderSrv.Server, orderLogs), orderLogs
	return s
}

// runLoops runs a service's background loops (run: its Server.Run) until
// ctx is done or the test ends; the test's end waits for them, and fails
// if one failed.
func runLoops(t testing.TB, ctx context.Context, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("background loops: %v", err)
		}
	})
}

// engine is a service's policy engine: the base policy and layer, the
// service's own (user.Policy, order.Policy), with opts.
func engine(t *testing.T, layer fs.FS, logger *slog.Logger, opts ...policy.EngineOption) *policy.Engine {
	t.Helper()
	b, err := policy.LoadFS(layer, "layer")
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(context.Background(), b, append([]policy.EngineOption{policy.WithLogger(logger)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Caller is a principal: a workload certificate and, optionally, a token.
type Caller struct {
	Name  string
	Cert  *certs.Issued
	Token string
	s     *System
}

func (c Caller) opts() []rpc.ClientOption {
	if c.Token == "" {
		return nil
	}
	tok := c.Token
	return []rpc.ClientOption{rpc.WithTokenSource(func(context.Context) (string, error) { return tok, nil })}
}

// Users returns a UserService client for c.
func (c Caller) Users(t *testing.T) userv1connect.UserServiceClient {
	t.Helper()
	cl, err := rpc.NewClient(userv1connect.NewUserServiceClient, c.s.Users.URL, c.s.CA.Source(c.Cert), c.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// Auth returns an AuthService client for c.
func (c Caller) Auth(t *testing.T) userv1connect.AuthServiceClient {
	t.Helper()
	cl, err := rpc.NewClient(userv1connect.NewAuthServiceClient, c.s.Users.URL, c.s.CA.Source(c.Cert), c.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// Tokens returns a client of the user service's TokenService (the token
// exchange) for c.
func (c Caller) Tokens(t *testing.T) tokenv1connect.TokenServiceClient {
	t.Helper()
	cl, err := rpc.NewClient(tokenv1connect.NewTokenServiceClient, c.s.Users.URL, c.s.CA.Source(c.Cert), c.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// Orders returns an OrderService client for c.
func (c Caller) Orders(t *testing.T) orderv1connect.OrderServiceClient {
	t.Helper()
	cl, err := rpc.NewClient(orderv1connect.NewOrderServiceClient, c.s.Orders.URL, c.s.CA.Source(c.Cert), c.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// Health returns a health client for c against the user service.
func (c Caller) Health(t *testing.T) *connect.Client[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse] {
	t.Helper()
	hc, err := rpc.NewHTTPClient(c.s.CA.Source(c.Cert))
	if err != nil {
		t.Fatal(err)
	}
	return connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](hc, c.s.Users.URL+rpc.HealthCheckProcedure)
}

// Login logs name in with the cli certificate and returns the caller.
func (s *System) Login(t *testing.T, name string) Caller {
	t.Helper()
	cli := Caller{Name: "cli", Cert: s.Certs["cli"], s: s}
	res, err := cli.Auth(t).Login(context.Background(), &userv1.LoginRequest{Username: name, Password: passwords[name]})
	if err != nil {
		t.Fatalf("login %s: %v", name, err)
	}
	return Caller{Name: name, Cert: s.Certs["cli"], Token: res.GetAccessToken(), s: s}
}

// Workload returns a caller that presents only the named certificate.
func (s *System) Workload(name string) Caller {
	return Caller{Name: name, Cert: s.Certs[name], s: s}
}

// ActingFor returns the order workload holding a token delegated by user.
func (s *System) ActingFor(t *testing.T, u Caller) Caller {
	t.Helper()
	res, err := s.Workload("order").Tokens(t).ExchangeToken(context.Background(), &tokenv1.ExchangeTokenRequest{SubjectToken: u.Token})
	if err != nil {
		t.Fatalf("exchange %s: %v", u.Name, err)
	}
	return Caller{Name: "order for " + u.Name, Cert: s.Certs["order"], Token: res.GetAccessToken(), s: s}
}
