package rpc_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// TestInvalidRequestIsRefusedBeforeTheHandler: a request that breaks its
// .proto's rules gets invalid_argument (HTTP 400 over Connect) naming the
// field and the rule, with the violations as an error detail, and the
// handler does not run.
func TestInvalidRequestIsRefusedBeforeTheHandler(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	hc := f.httpClient(t)
	cases := map[string]struct {
		body, want string
	}{
		"missing id":  {body: `{}`, want: "invalid request: id: value is required [required]"},
		"id too long": {body: `{"id":"` + strings.Repeat("a", 64) + `"}`, want: "invalid request: id: must be at most 63 characters [string.max_len]"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			res, body := post(t, hc, f.srv.URL+userv1connect.UserServiceGetUserProcedure, c.body, nil)
			if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"code":"invalid_argument"`) || !strings.Contains(body, c.want) {
				t.Fatalf("status %d body %s; want 400 invalid_argument %q", res.StatusCode, body, c.want)
			}
		})
	}
	t.Run("error detail", func(t *testing.T) {
		t.Parallel()
		_, err := f.userClient(t, rpc.WithProtocol(rpc.ProtocolGRPC)).GetUser(context.Background(), &userv1.GetUserRequest{})
		var cerr *connect.Error
		if !errors.As(err, &cerr) || cerr.Code() != connect.CodeInvalidArgument {
			t.Fatalf("got %v, want invalid_argument", err)
		}
		var found bool
		for _, d := range cerr.Details() {
			v, derr := d.Value()
			if viols, ok := v.(*validate.Violations); derr == nil && ok && len(viols.GetViolations()) == 1 {
				found = viols.GetViolations()[0].GetRuleId() == "required" &&
					viols.GetViolations()[0].GetField().GetElements()[0].GetFieldName() == "id"
			}
		}
		if !found {
			t.Fatalf("no buf.validate.Violations detail naming id/required in %v", cerr.Details())
		}
	})
	t.Cleanup(func() {
		if n := f.users.Calls(); n != 0 {
			t.Errorf("%d invalid requests reached the handler", n)
		}
	})
}

// TestValidationComesAfterAuthorization: a caller the policy refuses is
// refused as such, whatever its request holds, so it learns nothing of the
// request's rules.
func TestValidationComesAfterAuthorization(t *testing.T) {
	t.Parallel()
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		userv1connect.UserServiceGetUserProcedure:   {Workloads: []string{"spiffe://palisade.local/svc/order"}},
		userv1connect.UserServiceListUsersProcedure: {Workloads: []string{authz.AnyWorkload}, NeedsUser: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, authorizer)
	client := f.userClient(t)
	ctx := context.Background()
	if _, err := client.GetUser(ctx, &userv1.GetUserRequest{}); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("invalid GetUser from a workload the policy refuses: %v, want permission_denied", err)
	}
	if _, err := client.ListUsers(ctx, &userv1.ListUsersRequest{PageSize: -1}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("invalid ListUsers without the user it needs: %v, want unauthenticated", err)
	}
}

// orders is an order.v1.OrderService whose streams count the messages they
// receive: ImportOrders reads to the end, TrackOrders echoes each id.
type orders struct {
	orderv1connect.UnimplementedOrderServiceHandler
	received atomic.Int64
}

func (o *orders) ImportOrders(_ context.Context, stream *connect.ClientStream[orderv1.ImportOrdersRequest]) (*orderv1.ImportOrdersResponse, error) {
	for stream.Receive() {
		o.received.Add(1)
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return &orderv1.ImportOrdersResponse{}, nil
}

func (o *orders) TrackOrders(_ context.Context, stream *connect.BidiStream[orderv1.TrackOrdersRequest, orderv1.TrackOrdersResponse]) error {
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		o.received.Add(1)
		if err := stream.Send(&orderv1.TrackOrdersResponse{OrderId: req.GetOrderId()}); err != nil {
			return err
		}
	}
}

// TestEveryStreamMessageIsValidated: on client and bidi streams each
// message the handler receives is validated; the first invalid one ends the
// call with invalid_argument, and the handler never sees it.
func TestEveryStreamMessageIsValidated(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	authorizer := allowAnyWorkload(t, orderv1connect.OrderServiceImportOrdersProcedure, orderv1connect.OrderServiceTrackOrdersProcedure)
	svc := &orders{}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/order")), authorizer, func(s *rpc.Server) error {
		return rpc.Mount(s, orderv1connect.NewOrderServiceHandler, orderv1connect.OrderServiceHandler(svc))
	})
	client, err := rpc.NewClient(orderv1connect.NewOrderServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	good := &orderv1.ImportOrdersRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}}
	bad := &orderv1.ImportOrdersRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1001}}}
	imp, err := client.ImportOrders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*orderv1.ImportOrdersRequest{good, good, bad, good} {
		if err := imp.Send(m); err != nil {
			break // the server may already have answered
		}
	}
	_, err = imp.CloseAndReceive()
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "items[0].quantity") || !strings.Contains(err.Error(), "[int32.gte_lte]") {
		t.Fatalf("ImportOrders with an invalid third message: %v", err)
	}
	if n := svc.received.Load(); n != 2 {
		t.Fatalf("handler received %d messages, want the 2 valid ones before the invalid one", n)
	}

	track, err := client.TrackOrders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := track.Send(&orderv1.TrackOrdersRequest{OrderId: "ord_1"}); err != nil {
		t.Fatal(err)
	}
	if res, err := track.Receive(); err != nil || res.GetOrderId() != "ord_1" {
		t.Fatalf("TrackOrders echo: %v %v", res, err)
	}
	_ = track.Send(&orderv1.TrackOrdersRequest{})
	if _, err := track.Receive(); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "order_id: value is required [required]") {
		t.Fatalf("TrackOrders with an empty order id: %v", err)
	}
	_ = track.CloseRequest()
	_ = track.CloseResponse()
	if n := svc.received.Load(); n != 3 {
		t.Fatalf("handler received %d messages in all, want 3", n)
	}
}
