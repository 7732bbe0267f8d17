package order_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/services/internal/logrecorder"
	"github.com/palisade-rpc/palisade/services/order"
)

// fakeUsers is a UserDirectory answering with answer, counting calls.
type fakeUsers struct {
	calls  atomic.Int64
	answer func(ctx context.Context, id string) (*userv1.User, error)
}

func (f *fakeUsers) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	f.calls.Add(1)
	u, err := f.answer(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &userv1.GetUserResponse{User: u}, nil
}

func activeUser(_ context.Context, id string) (*userv1.User, error) {
	return &userv1.User{Id: id, DisplayName: strings.ToUpper(id), Active: true}, nil
}

func failWith(code connect.Code) func(context.Context, string) (*userv1.User, error) {
	return func(context.Context, string) (*userv1.User, error) {
		return nil, connect.NewError(code, errors.New("upstream detail: db at /var/secret"))
	}
}

func validRequest(userID string) *orderv1.CreateOrderRequest {
	return &orderv1.CreateOrderRequest{UserId: userID, Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 2}}}
}

func TestCreateOrderMapsTheUserServiceAnswer(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		answer  func(context.Context, string) (*userv1.User, error)
		code    connect.Code // 0: success
		message string       // the exact message the client sees
	}{
		"active user": {answer: activeUser},
		"unknown user": {answer: failWith(connect.CodeNotFound),
			code: connect.CodeFailedPrecondition, message: `user "carol" does not exist`},
		"inactive user": {answer: func(_ context.Context, id string) (*userv1.User, error) {
			return &userv1.User{Id: id, DisplayName: "C"}, nil
		}, code: connect.CodeFailedPrecondition, message: `user "carol" is not active`},
		"upstream unavailable": {answer: failWith(connect.CodeUnavailable),
			code: connect.CodeUnavailable, message: "user service unavailable"},
		"upstream deadline": {answer: failWith(connect.CodeDeadlineExceeded),
			code: connect.CodeUnavailable, message: "user service unavailable"},
		"upstream canceled": {answer: failWith(connect.CodeCanceled),
			code: connect.CodeUnavailable, message: "user service unavailable"},
		"upstream denies": {answer: failWith(connect.CodePermissionDenied),
			code: connect.CodePermissionDenied, message: "the user service refused to validate the user"},
		"upstream unauthenticated": {answer: failWith(connect.CodeUnauthenticated),
			code: connect.CodePermissionDenied, message: "the user service refused to validate the user"},
		"upstream internal": {answer: failWith(connect.CodeInternal),
			code: connect.CodeInternal, message: "internal error"},
		"upstream invalid argument": {answer: failWith(connect.CodeInvalidArgument),
			code: connect.CodeInternal, message: "internal error"},
		"plain error": {answer: func(context.Context, string) (*userv1.User, error) { return nil, errors.New("boom") },
			code: connect.CodeInternal, message: "internal error"},
		"answer for another user": {answer: func(ctx context.Context, _ string) (*userv1.User, error) { return activeUser(ctx, "mallory") },
			code: connect.CodeInternal, message: "internal error"},
		"empty answer": {answer: func(context.Context, string) (*userv1.User, error) { return nil, nil },
			code: connect.CodeInternal, message: "internal error"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			store, _ := openStore(t)
			users := &fakeUsers{answer: c.answer}
			rec := logrecorder.New(slog.LevelDebug)
			svc := order.NewService(store, users, slog.New(rec))
			res, err := svc.CreateOrder(context.Background(), validRequest("carol"))
			if users.calls.Load() != 1 {
				t.Fatalf("user service called %d times, want 1", users.calls.Load())
			}
			if c.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				o := res.GetOrder()
				if o.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_ACCEPTED || o.GetUserDisplayName() != "CAROL" || o.GetUserId() != "carol" {
					t.Fatalf("order %v", o)
				}
				if n := count(t, store); n != 1 {
					t.Fatalf("Count = %d, want 1", n)
				}
				return
			}
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != c.code || ce.Message() != c.message {
				t.Fatalf("got %v; want %v %q", err, c.code, c.message)
			}
			if n := count(t, store); n != 0 {
				t.Fatalf("Count = %d after a refused order, want 0", n)
			}
		})
	}
}

func TestCreateOrderValidatesBeforeCallingUsers(t *testing.T) {
	t.Parallel()
	store, _ := openStore(t)
	users := &fakeUsers{answer: activeUser}
	svc := order.NewService(store, users, slog.New(logrecorder.New(slog.LevelDebug)))
	items := func(n int) []*orderv1.LineItem {
		out := make([]*orderv1.LineItem, n)
		for i := range out {
			out[i] = &orderv1.LineItem{Sku: "x", Quantity: 1}
		}
		return out
	}
	cases := map[string]struct {
		req   *orderv1.CreateOrderRequest
		field string // the message starts with it; "" means the request is valid
	}{
		"no user id":     {req: &orderv1.CreateOrderRequest{Items: items(1)}, field: "user_id"},
		"no items":       {req: &orderv1.CreateOrderRequest{UserId: "alice"}, field: "items"},
		"too many items": {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: items(order.MaxItems + 1)}, field: "items"},
		"most items":     {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: items(order.MaxItems)}},
		"empty sku":      {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "a", Quantity: 1}, {Quantity: 1}}}, field: "items[1].sku"},
		"long sku":       {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: strings.Repeat("s", order.MaxSKULen+1), Quantity: 1}}}, field: "items[0].sku"},
		"quantity 0":     {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "a"}}}, field: "items[0].quantity"},
		"negative":       {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "a", Quantity: -1}}}, field: "items[0].quantity"},
		"quantity 1001":  {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "a", Quantity: order.MaxQuantity + 1}}}, field: "items[0].quantity"},
		"quantity 1000":  {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "a", Quantity: order.MaxQuantity}}}},
		"nil item":       {req: &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{nil}}, field: "items[0].sku"},
		"empty request":  {req: &orderv1.CreateOrderRequest{}, field: "user_id"},
	}
	var valid int64
	for _, c := range cases {
		if c.field == "" {
			valid++
		}
	}
	t.Run("cases", func(t *testing.T) {
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				_, err := svc.CreateOrder(context.Background(), c.req)
				if c.field == "" {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				var ce *connect.Error
				if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument || !strings.HasPrefix(ce.Message(), c.field+": ") {
					t.Fatalf("got %v; want invalid_argument naming %s", err, c.field)
				}
			})
		}
	})
	if n := users.calls.Load(); n != valid {
		t.Fatalf("user service called %d times, want %d (only for valid requests)", n, valid)
	}
	if n := count(t, store); n != int(valid) {
		t.Fatalf("Count = %d, want %d", n, valid)
	}
}

// TestCreateOrderAnswersBeforeTheCallersDeadline: a user service that never
// answers is given up on before the caller's deadline, keeping back a
// reserve to answer in (a tenth of the time left, 50 ms to 500 ms), and the
// caller gets unavailable rather than its own deadline_exceeded. The
// reserve is read from the two deadlines, not from the clock when the
// answer comes: how soon it reaches the caller after the lookup gives up is
// up to the scheduler, and a loaded machine can take longer than any
// reserve.
func TestCreateOrderAnswersBeforeTheCallersDeadline(t *testing.T) {
	t.Parallel()
	cases := map[string]time.Duration{"short deadline": 300 * time.Millisecond, "long deadline": 2 * time.Second}
	for name, budget := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			store, _ := openStore(t)
			var upstreamDeadline time.Time
			users := &fakeUsers{answer: func(ctx context.Context, _ string) (*userv1.User, error) {
				upstreamDeadline, _ = ctx.Deadline()
				<-ctx.Done()
				return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
			}}
			svc := order.NewService(store, users, slog.New(logrecorder.New(slog.LevelDebug)))
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			deadline, _ := ctx.Deadline()
			_, err := svc.CreateOrder(ctx, validRequest("alice"))
			if connect.CodeOf(err) != connect.CodeUnavailable {
				t.Fatalf("got %v, want unavailable", err)
			}
			// The time left when the lookup starts is at most the budget.
			reserve, most := deadline.Sub(upstreamDeadline), max(budget/10, order.MinReplyReserve)
			if reserve < order.MinReplyReserve || reserve > most {
				t.Fatalf("the lookup's deadline is %v before the caller's; want %v to %v", reserve, order.MinReplyReserve, most)
			}
			if n := count(t, store); n != 0 {
				t.Fatalf("Count = %d, want 0", n)
			}
		})
	}
	t.Run("no deadline", func(t *testing.T) {
		t.Parallel()
		store, _ := openStore(t)
		var got time.Duration
		users := &fakeUsers{answer: func(ctx context.Context, id string) (*userv1.User, error) {
			d, ok := ctx.Deadline()
			if !ok {
				return nil, errors.New("no deadline")
			}
			got = time.Until(d)
			return activeUser(ctx, id)
		}}
		svc := order.NewService(store, users, nil)
		if _, err := svc.CreateOrder(context.Background(), validRequest("alice")); err != nil {
			t.Fatal(err)
		}
		if got <= 0 || got > order.UserLookupTimeout {
			t.Fatalf("lookup deadline in %v, want at most %v", got, order.UserLookupTimeout)
		}
	})
}

func TestGetAndListOrders(t *testing.T) {
	t.Parallel()
	store, _ := openStore(t)
	svc := order.NewService(store, &fakeUsers{answer: activeUser}, slog.New(logrecorder.New(slog.LevelDebug)))
	ctx := context.Background()
	var ids []string
	for range 3 {
		res, err := svc.CreateOrder(ctx, validRequest("alice"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.GetOrder().GetId())
	}
	// GetOrder asks a resource-level decision with the order's owner; this
	// authorizer lets only the owner read.
	ownerOnly := authz.AuthorizerFunc(func(_ context.Context, in *authz.Input) (authz.Decision, error) {
		return authz.Decision{Allow: in.Resource != nil && in.Resource.Owner == in.Principal.User.Subject}, nil
	})
	as := func(sub string) context.Context {
		p := &security.Principal{User: &security.User{Subject: sub}}
		return authz.NewCallContext(security.NewContext(ctx, p), ownerOnly, orderv1connect.OrderServiceGetOrderProcedure, authz.WithLogger(slog.New(slog.DiscardHandler)))
	}
	t.Run("get", func(t *testing.T) {
		t.Parallel()
		res, err := svc.GetOrder(as("alice"), &orderv1.GetOrderRequest{Id: ids[0]})
		if err != nil || res.GetOrder().GetId() != ids[0] || len(res.GetOrder().GetItems()) != 1 {
			t.Fatalf("%v %v", res, err)
		}
	})
	t.Run("get someone else's order", func(t *testing.T) {
		t.Parallel()
		if _, err := svc.GetOrder(as("bob"), &orderv1.GetOrderRequest{Id: ids[0]}); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("bob reading alice's order: %v", err)
		}
		if _, err := svc.GetOrder(ctx, &orderv1.GetOrderRequest{Id: ids[0]}); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("a call without an authorizer: %v, want denied", err)
		}
	})
	errCases := map[string]struct {
		call func() error
		code connect.Code
		msg  string
	}{
		"get without id": {call: func() error { _, err := svc.GetOrder(ctx, &orderv1.GetOrderRequest{}); return err },
			code: connect.CodeInvalidArgument, msg: "id: required"},
		"get unknown": {call: func() error { _, err := svc.GetOrder(ctx, &orderv1.GetOrderRequest{Id: "ord_nope"}); return err },
			code: connect.CodeNotFound, msg: `order "ord_nope" not found`},
		"list without user": {call: func() error { _, err := svc.ListOrders(ctx, &orderv1.ListOrdersRequest{}); return err },
			code: connect.CodeInvalidArgument, msg: "user_id: required"},
		"list negative size": {call: func() error {
			_, err := svc.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice", PageSize: -1})
			return err
		}, code: connect.CodeInvalidArgument, msg: "page_size"},
		"list bad token": {call: func() error {
			_, err := svc.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice", PageToken: "nope"})
			return err
		}, code: connect.CodeInvalidArgument, msg: "page_token"},
	}
	for name, c := range errCases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := c.call()
			if connect.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v; want %v containing %q", err, c.code, c.msg)
			}
		})
	}
	t.Run("list pages newest first", func(t *testing.T) {
		t.Parallel()
		first, err := svc.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice", PageSize: 2})
		if err != nil || len(first.GetOrders()) != 2 || first.GetNextPageToken() == "" {
			t.Fatalf("%v %v", first, err)
		}
		second, err := svc.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice", PageSize: 2, PageToken: first.GetNextPageToken()})
		if err != nil || len(second.GetOrders()) != 1 || second.GetNextPageToken() != "" {
			t.Fatalf("%v %v", second, err)
		}
		all, err := svc.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice", PageSize: 1 << 20})
		if err != nil || len(all.GetOrders()) != 3 {
			t.Fatalf("clamped page: %v %v", all, err)
		}
	})
}

func TestStoreFailureIsInternal(t *testing.T) {
	t.Parallel()
	store, _ := openStore(t)
	rec := logrecorder.New(slog.LevelDebug)
	svc := order.NewService(store, &fakeUsers{answer: activeUser}, slog.New(rec))
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := svc.CreateOrder(context.Background(), validRequest("alice"))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeInternal || ce.Message() != "internal error" {
		t.Fatalf("got %v, want internal with a fixed message", err)
	}
	if len(rec.Find("order store failed", map[string]string{"method": "CreateOrder"})) != 1 {
		t.Fatalf("cause not logged: %v", rec.Entries())
	}
}
