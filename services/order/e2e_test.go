package order_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/services/internal/logrecorder"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/user"
)

const (
	userSvcID  = "spiffe://palisade.local/svc/user"
	orderSvcID = "spiffe://palisade.local/svc/order"
	cliID      = "spiffe://palisade.local/client/cli"
)

// system is the user and order services running over mTLS on loopback, as
// in the demo, with a client holding the cli certificate.
type system struct {
	userStore  *user.Store
	orderStore *order.Store
	// userLog records everything the user server and service log.
	userLog *logrecorder.Recorder
	userSrv *rpctest.Server
	orders  orderv1connect.OrderServiceClient
}

type systemOptions struct {
	// userAllow is the user server's allow-list for GetUser; default: the order service.
	userAllow []string
	// userURL replaces the user server's URL in the order service's client.
	userURL string
}

func allowList(t *testing.T, rules map[string]authz.Rule) authz.Authorizer {
	t.Helper()
	a, err := authz.NewAllowList(rules)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func startSystem(t *testing.T, opts systemOptions) *system {
	t.Helper()
	ctx := context.Background()
	ca := certstest.NewCA(t)
	sys := &system{userLog: logrecorder.New(slog.LevelDebug)}
	userLogger := slog.New(sys.userLog)

	// The user service, with the demo users and one inactive user.
	var err error
	if sys.userStore, err = user.OpenStore(ctx, filepath.Join(t.TempDir(), "users.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.userStore.Close() })
	if _, err := sys.userStore.SeedDemoUsers(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sys.userStore.Create(ctx, &userv1.User{Id: "ivy", DisplayName: "Ivy", Email: "ivy@example.com", Active: false}); err != nil {
		t.Fatal(err)
	}
	userAllow := opts.userAllow
	if userAllow == nil {
		userAllow = []string{orderSvcID}
	}
	userSvc := user.NewService(sys.userStore, userLogger)
	sys.userSrv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")),
		allowList(t, map[string]authz.Rule{userv1connect.UserServiceGetUserProcedure: {Workloads: userAllow}}),
		func(s *rpc.Server) error {
			return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(userSvc))
		},
		rpc.WithLogger(userLogger))

	// The order service, calling the user service with its own certificate.
	userURL := sys.userSrv.URL
	if opts.userURL != "" {
		userURL = opts.userURL
	}
	orderCert := ca.Server("/svc/order")
	users, err := rpc.NewClient(userv1connect.NewUserServiceClient, userURL, ca.Source(orderCert), rpc.WithServerID(userSvcID))
	if err != nil {
		t.Fatal(err)
	}
	if sys.orderStore, err = order.OpenStore(ctx, filepath.Join(t.TempDir(), "orders.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.orderStore.Close() })
	orderSvc := order.NewService(sys.orderStore, users, slog.New(logrecorder.New(slog.LevelDebug)))
	orderSrv := rpctest.Start(t, ca.Source(orderCert),
		allowList(t, map[string]authz.Rule{
			orderv1connect.OrderServiceCreateOrderProcedure: {Workloads: []string{cliID}},
			orderv1connect.OrderServiceGetOrderProcedure:    {Workloads: []string{cliID}},
			orderv1connect.OrderServiceListOrdersProcedure:  {Workloads: []string{cliID}},
		}),
		func(s *rpc.Server) error {
			return rpc.Mount(s, orderv1connect.NewOrderServiceHandler, orderv1connect.OrderServiceHandler(orderSvc))
		})

	if sys.orders, err = rpc.NewClient(orderv1connect.NewOrderServiceClient, orderSrv.URL, ca.Source(ca.Client("/client/cli")), rpc.WithServerID(orderSvcID)); err != nil {
		t.Fatal(err)
	}
	return sys
}

// getUserCalls counts the GetUser calls that reached the user server's interceptor chain.
func (s *system) getUserCalls() int {
	return len(s.userLog.Find("rpc", map[string]string{"procedure": userv1connect.UserServiceGetUserProcedure}))
}

func (s *system) count(t *testing.T) int {
	t.Helper()
	return count(t, s.orderStore)
}

func wantError(t *testing.T, err error, code connect.Code, message string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != code || (message != "" && ce.Message() != message) {
		t.Fatalf("got %v; want %v %q", err, code, message)
	}
}

func bookOrder(userID string) *orderv1.CreateOrderRequest {
	return &orderv1.CreateOrderRequest{UserId: userID, Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 2}}}
}

// TestEndToEndOrderIsValidatedWithTheUserService: an order for alice is
// accepted and stored, and the user service saw the order service's SPIFFE
// ID as the caller, in its access log and in its "user read" audit line.
func TestEndToEndOrderIsValidatedWithTheUserService(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	res, err := sys.orders.CreateOrder(ctx, bookOrder("alice"))
	if err != nil {
		t.Fatalf("CreateOrder: %v", err)
	}
	o := res.GetOrder()
	if o.GetUserId() != "alice" || o.GetUserDisplayName() != "Alice" || o.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_ACCEPTED ||
		!orderIDPattern.MatchString(o.GetId()) || len(o.GetItems()) != 1 || o.GetItems()[0].GetQuantity() != 2 {
		t.Fatalf("order %v", o)
	}
	if n := sys.count(t); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
	got, err := sys.orders.GetOrder(ctx, &orderv1.GetOrderRequest{Id: o.GetId()})
	if err != nil || got.GetOrder().GetId() != o.GetId() {
		t.Fatalf("GetOrder: %v, %v", got, err)
	}
	list, err := sys.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice"})
	if err != nil || len(list.GetOrders()) != 1 || list.GetOrders()[0].GetId() != o.GetId() {
		t.Fatalf("ListOrders: %v, %v", list, err)
	}

	access := sys.userLog.Find("rpc", map[string]string{
		"procedure": userv1connect.UserServiceGetUserProcedure,
		"peer":      orderSvcID,
		"code":      "ok",
	})
	if len(access) != 1 {
		t.Errorf("%d access-log records of GetUser from the order service, want 1; log: %v", len(access), sys.userLog.Entries())
	}
	reads := sys.userLog.Find("user read", map[string]string{"user_id": "alice", "caller": orderSvcID})
	if len(reads) != 1 {
		t.Errorf("%d \"user read\" records for alice by the order service, want 1; log: %v", len(reads), sys.userLog.Entries())
	}
}

// TestEndToEndRefusedUsers: orders for users the user service does not
// vouch for are refused with failed_precondition and not stored.
func TestEndToEndRefusedUsers(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOptions{})
	cases := map[string]struct {
		userID  string
		message string
	}{
		"unknown user":  {userID: "zed", message: `user "zed" does not exist`},
		"inactive user": {userID: "ivy", message: `user "ivy" is not active`},
	}
	t.Run("cases", func(t *testing.T) {
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := sys.orders.CreateOrder(ctx, bookOrder(c.userID))
				wantError(t, err, connect.CodeFailedPrecondition, c.message)
			})
		}
	})
	if n := sys.count(t); n != 0 {
		t.Fatalf("Count = %d after refused orders, want 0", n)
	}
	if n := sys.getUserCalls(); n != len(cases) {
		t.Fatalf("user service asked %d times, want %d", n, len(cases))
	}
}

// TestEndToEndBadRequests are refused with invalid_argument, naming the
// field and the protovalidate rule, before the handler runs and the user
// service is asked.
func TestEndToEndBadRequests(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOptions{})
	cases := map[string]struct {
		req     *orderv1.CreateOrderRequest
		message string
	}{
		"no items":   {req: &orderv1.CreateOrderRequest{UserId: "alice"}, message: "invalid request: items: must contain at least 1 item(s) [repeated.min_items]"},
		"quantity 0": {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1"}}}, message: "invalid request: items[0].quantity: must be greater than or equal to 1 and less than or equal to 1000 [int32.gte_lte]"},
		"empty sku":  {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}, {Quantity: 1}}}, message: "invalid request: items[1].sku: value is required [required]"},
		"no user":    {req: &orderv1.CreateOrderRequest{Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}}, message: "invalid request: user_id: value is required [required]"},
	}
	t.Run("cases", func(t *testing.T) {
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := sys.orders.CreateOrder(ctx, c.req)
				wantError(t, err, connect.CodeInvalidArgument, c.message)
			})
		}
	})
	if n := sys.getUserCalls(); n != 0 {
		t.Fatalf("user service called %d times for bad requests", n)
	}
	if n := sys.count(t); n != 0 {
		t.Fatalf("Count = %d, want 0", n)
	}
}

// TestEndToEndUserServiceRefusesTheOrderService: when the user service's
// policy does not admit the order service, the client learns that the user
// could not be validated, not the policy's reasons.
func TestEndToEndUserServiceRefusesTheOrderService(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOptions{userAllow: []string{cliID}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := sys.orders.CreateOrder(ctx, bookOrder("alice"))
	wantError(t, err, connect.CodePermissionDenied, "the user service refused to validate the user")
	if n := sys.count(t); n != 0 {
		t.Fatalf("Count = %d, want 0", n)
	}
}

// blackhole listens on loopback, accepts TCP connections and never writes
// to them: a peer that is up but never answers. It returns its https URL
// and the number of connections accepted so far.
func blackhole(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		conns    []net.Conn
		accepted atomic.Int64
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return "https://" + ln.Addr().String(), &accepted
}

// TestEndToEndUserServiceUnreachable: with the user service stopped, or
// accepting connections but never answering, CreateOrder with a 2s deadline
// fails with unavailable before that deadline, and stores nothing.
func TestEndToEndUserServiceUnreachable(t *testing.T) {
	t.Parallel()
	const (
		deadline = 2 * time.Second
		margin   = 250 * time.Millisecond
	)
	cases := map[string]func(t *testing.T) (*system, func(t *testing.T)){
		"stopped": func(t *testing.T) (*system, func(t *testing.T)) {
			sys := startSystem(t, systemOptions{})
			if err := sys.userSrv.Stop(); err != nil {
				t.Fatal(err)
			}
			return sys, func(*testing.T) {}
		},
		"accepts but never answers": func(t *testing.T) (*system, func(t *testing.T)) {
			url, accepted := blackhole(t)
			sys := startSystem(t, systemOptions{userURL: url})
			return sys, func(t *testing.T) {
				if accepted.Load() == 0 {
					t.Error("the order service never connected to the silent peer")
				}
			}
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sys, check := setup(t)
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			_, err := sys.orders.CreateOrder(ctx, bookOrder("alice"))
			elapsed := time.Since(start)
			t.Logf("CreateOrder returned after %v", elapsed)
			wantError(t, err, connect.CodeUnavailable, "user service unavailable")
			if elapsed > deadline+margin {
				t.Fatalf("took %v with a %v deadline", elapsed, deadline)
			}
			check(t)
			if n := sys.count(t); n != 0 {
				t.Fatalf("Count = %d, want 0", n)
			}
		})
	}
}
