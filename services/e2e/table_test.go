package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

const (
	ok           = connect.Code(0)
	unauth       = connect.CodeUnauthenticated
	denied       = connect.CodePermissionDenied
	precondition = connect.CodeFailedPrecondition
)

var userSeq atomic.Int64

// TestEveryProcedureEveryPrincipal is the authorization table: each sample
// procedure called by each principal, over mTLS with real tokens, and the
// code it must get.
func TestEveryProcedureEveryPrincipal(t *testing.T) {
	t.Parallel()
	s := Start(t)
	alice, bob, admin := s.Login(t, "alice"), s.Login(t, "bob"), s.Login(t, "admin")
	orderForAlice, orderForAdmin := s.ActingFor(t, alice), s.ActingFor(t, admin)
	orderAlone, intruder := s.Workload("order"), s.Workload("intruder")

	ctx := context.Background()
	created, err := alice.Orders(t).CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}})
	if err != nil {
		t.Fatalf("alice's order: %v", err)
	}
	aliceOrder := created.GetOrder().GetId()

	type call func(t *testing.T, c Caller) error
	getUser := func(id string) call {
		return func(t *testing.T, c Caller) error {
			_, err := c.Users(t).GetUser(ctx, &userv1.GetUserRequest{Id: id})
			return err
		}
	}
	listUsers := func(t *testing.T, c Caller) error {
		_, err := c.Users(t).ListUsers(ctx, &userv1.ListUsersRequest{})
		return err
	}
	createUser := func(t *testing.T, c Caller) error {
		id := fmt.Sprintf("new%d", userSeq.Add(1))
		_, err := c.Users(t).CreateUser(ctx, &userv1.CreateUserRequest{User: &userv1.User{Id: id, DisplayName: "New", Email: id + "@example.com", Active: true}})
		return err
	}
	updateUser := func(t *testing.T, c Caller) error {
		_, err := c.Users(t).UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob", DisplayName: "Bob"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
		return err
	}
	login := func(t *testing.T, c Caller) error {
		_, err := c.Auth(t).Login(ctx, &userv1.LoginRequest{Username: "bob", Password: passwords["bob"]})
		return err
	}
	exchange := func(t *testing.T, c Caller) error {
		_, err := c.Tokens(t).ExchangeToken(ctx, &tokenv1.ExchangeTokenRequest{SubjectToken: alice.Token})
		return err
	}
	createOrder := func(forUser string) call {
		return func(t *testing.T, c Caller) error {
			_, err := c.Orders(t).CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: forUser, Items: []*orderv1.LineItem{{Sku: "book-2", Quantity: 1}}})
			return err
		}
	}
	getOrder := func(t *testing.T, c Caller) error {
		_, err := c.Orders(t).GetOrder(ctx, &orderv1.GetOrderRequest{Id: aliceOrder})
		return err
	}
	listOrders := func(t *testing.T, c Caller) error {
		_, err := c.Orders(t).ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: "alice"})
		return err
	}
	health := func(t *testing.T, c Caller) error {
		_, err := c.Health(t).CallUnary(ctx, connect.NewRequest(&healthpb.HealthCheckRequest{}))
		return err
	}

	// Streams: the first answer, or the error that ends the stream.
	watch := func(t *testing.T, c Caller) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.Users(t).WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{})
		if err != nil {
			return err
		}
		stream.Receive()
		return stream.Err()
	}
	importOrders := func(t *testing.T, c Caller) error {
		stream, err := c.Orders(t).ImportOrders(ctx)
		if err != nil {
			return err
		}
		_ = stream.Send(&orderv1.ImportOrdersRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-3", Quantity: 1}}})
		_, err = stream.CloseAndReceive()
		return err
	}
	trackOrders := func(t *testing.T, c Caller) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.Orders(t).TrackOrders(ctx)
		if err != nil {
			return err
		}
		_ = stream.Send(&orderv1.TrackOrdersRequest{OrderId: aliceOrder})
		_, err = stream.Receive()
		return err
	}

	principals := []Caller{alice, bob, admin, orderForAlice, orderForAdmin, orderAlone, intruder}
	// want lists the code for each principal, in the order above.
	table := []struct {
		procedure string
		call      call
		want      []connect.Code
	}{
		//                                         alice   bob     admin   order→alice order→admin order   intruder
		{"UserService.GetUser(alice)", getUser("alice"), []connect.Code{ok, denied, ok, ok, ok, unauth, unauth}},
		{"UserService.GetUser(bob)", getUser("bob"), []connect.Code{denied, ok, ok, denied, ok, unauth, unauth}},
		{"UserService.ListUsers", listUsers, []connect.Code{denied, denied, ok, denied, denied, unauth, unauth}},
		{"UserService.CreateUser", createUser, []connect.Code{denied, denied, ok, denied, denied, unauth, unauth}},
		{"UserService.UpdateUser", updateUser, []connect.Code{denied, denied, ok, denied, denied, unauth, unauth}},
		{"AuthService.Login", login, []connect.Code{ok, ok, ok, ok, ok, ok, ok}},
		{"TokenService.ExchangeToken", exchange, []connect.Code{denied, denied, denied, ok, ok, ok, denied}},
		// The delegated tokens are for the user service (aud): the order service refuses them.
		{"OrderService.CreateOrder(alice)", createOrder("alice"), []connect.Code{ok, denied, ok, unauth, unauth, unauth, unauth}},
		{"OrderService.CreateOrder(bob)", createOrder("bob"), []connect.Code{denied, ok, ok, unauth, unauth, unauth, unauth}},
		{"OrderService.CreateOrder(zed)", createOrder("zed"), []connect.Code{denied, denied, precondition, unauth, unauth, unauth, unauth}},
		{"OrderService.GetOrder(alice's)", getOrder, []connect.Code{ok, denied, ok, unauth, unauth, unauth, unauth}},
		{"OrderService.ListOrders(alice)", listOrders, []connect.Code{ok, denied, ok, unauth, unauth, unauth, unauth}},
		{"Health.Check", health, []connect.Code{ok, ok, ok, ok, ok, ok, ok}},
		{"UserService.WatchUserChanges", watch, []connect.Code{denied, denied, denied, denied, denied, ok, denied}},
		{"OrderService.ImportOrders(alice)", importOrders, []connect.Code{ok, denied, ok, unauth, unauth, unauth, unauth}},
		{"OrderService.TrackOrders(alice's)", trackOrders, []connect.Code{ok, denied, ok, unauth, unauth, unauth, unauth}},
	}
	for _, row := range table {
		for i, p := range principals {
			t.Run(row.procedure+"/"+p.Name, func(t *testing.T) {
				t.Parallel()
				err := row.call(t, p)
				if got := connect.CodeOf(err); err == nil && row.want[i] != ok || err != nil && got != row.want[i] {
					t.Fatalf("got %v, want %v", err, codeName(row.want[i]))
				}
				if err != nil && row.want[i] == denied && !strings.Contains(err.Error(), "decision ") {
					t.Fatalf("a denial must name its decision: %v", err)
				}
			})
		}
	}
}

func codeName(c connect.Code) string {
	if c == ok {
		return "ok"
	}
	return c.String()
}
