package policy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

func TestInputDocument(t *testing.T) {
	t.Parallel()
	order, _ := spiffeid.Parse("spiffe://palisade.local/svc/order")
	in := &authz.Input{
		Procedure: "/user.v1.UserService/UpdateUser", Service: "user.v1.UserService", Method: "UpdateUser", StreamType: "unary",
		Principal: &security.Principal{
			Workload: security.Workload{ID: order, CertSHA256: [32]byte{0xab}},
			User: &security.User{Subject: "alice", Roles: []string{"customer"}, Audience: []string{"a"}, Issuer: "i",
				TokenID: "j", ExpiresAt: time.Unix(1790000000, 0), Actor: order.String(), CertBound: true},
			Token: security.NewSecret("eyJ.secret.token"),
		},
		Request: &userv1.UpdateUserRequest{
			User:       &userv1.User{Id: "alice", DisplayName: "A", Roles: []string{"x", "y"}, Active: true, CreateTime: timestamppb.New(time.Unix(0, 0))},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name", "roles"}},
		},
		Resource:   &authz.Resource{Kind: "order", ID: "o1", Owner: "alice"},
		HTTPMethod: "POST", Protocol: "grpc",
	}
	got := policy.InputValue(in).String()
	want := ast.MustParseTerm(`{
		"procedure": "/user.v1.UserService/UpdateUser", "service": "user.v1.UserService", "method": "UpdateUser", "stream_type": "unary",
		"peer": {"spiffe_id": "spiffe://palisade.local/svc/order", "cert_sha256": "ab00000000000000000000000000000000000000000000000000000000000000"},
		"token": {"sub": "alice", "roles": ["customer"], "scope": "", "aud": ["a"], "iss": "i", "jti": "j", "exp": 1790000000,
		          "act": {"sub": "spiffe://palisade.local/svc/order"}, "bound": true},
		"request": {"user": {"id": "alice", "display_name": "A", "roles": ["x", "y"], "active": true, "create_time": "1970-01-01T00:00:00Z"},
		            "update_mask": ["display_name", "roles"]},
		"resource": {"kind": "order", "id": "o1", "owner": "alice"},
		"http": {"method": "POST", "protocol": "grpc"}
	}`).Value
	if policy.InputValue(in).Compare(want) != 0 {
		t.Fatalf("input\n got %s\nwant %s", got, want)
	}
	if strings.Contains(got, "secret") {
		t.Fatal("the raw token reached the policy input")
	}

	// Enums by name, repeated messages, numbers as numbers; unset fields absent.
	o := &orderv1.CreateOrderRequest{UserId: "bob", Items: []*orderv1.LineItem{{Sku: "s", Quantity: 3}}}
	v := policy.MessageValue(o.ProtoReflect())
	if v.Compare(ast.MustParseTerm(`{"user_id": "bob", "items": [{"sku": "s", "quantity": 3}]}`).Value) != 0 {
		t.Fatalf("CreateOrderRequest: %s", v)
	}
	st := &orderv1.Order{Status: orderv1.OrderStatus_ORDER_STATUS_SHIPPED}
	if v := policy.MessageValue(st.ProtoReflect()); v.Compare(ast.MustParseTerm(`{"status": "ORDER_STATUS_SHIPPED"}`).Value) != 0 {
		t.Fatalf("enum: %s", v)
	}
	if v := policy.InputValue(&authz.Input{}); v.(ast.Object).Get(ast.StringTerm("token")) != nil || v.(ast.Object).Get(ast.StringTerm("request")) != nil {
		t.Fatalf("empty input has token or request: %s", v)
	}
}
