package proto_test

import (
	"errors"
	"strings"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// TestEveryRequestHasRules: each RPC of the sample services takes a request
// with at least one protovalidate rule, so a new RPC cannot be added
// without deciding what a valid request is.
func TestEveryRequestHasRules(t *testing.T) {
	t.Parallel()
	files := []protoreflect.FileDescriptor{
		userv1.File_user_v1_user_proto, userv1.File_user_v1_auth_proto, orderv1.File_order_v1_order_proto,
		tokenv1.File_palisade_token_v1_token_proto,
	}
	methods := 0
	for _, f := range files {
		for i := 0; i < f.Services().Len(); i++ {
			svc := f.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				methods++
				if !hasRules(m.Input(), map[protoreflect.FullName]bool{}) {
					t.Errorf("%s takes %s, which has no buf.validate rules", m.FullName(), m.Input().FullName())
				}
			}
		}
	}
	if methods < 12 {
		t.Fatalf("found %d methods; the descriptors are not the sample services'", methods)
	}
}

// hasRules reports whether a field of md, or of a message it holds, carries
// a buf.validate.field option.
func hasRules(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return false
	}
	seen[md.FullName()] = true
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if proto.HasExtension(fd.Options(), validate.E_Field) {
			return true
		}
		if fd.Message() != nil && hasRules(fd.Message(), seen) {
			return true
		}
	}
	return false
}

// TestSampleRules: representative requests the handlers accept pass the
// rules; requests they refuse are refused by a rule that names the field.
func TestSampleRules(t *testing.T) {
	t.Parallel()
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	item := func(sku string, q int32) []*orderv1.LineItem { return []*orderv1.LineItem{{Sku: sku, Quantity: q}} }
	valid := map[string]proto.Message{
		"GetUser":           &userv1.GetUserRequest{Id: "alice"},
		"ListUsers default": &userv1.ListUsersRequest{},
		"ListUsers 500":     &userv1.ListUsersRequest{PageSize: 500, PageToken: "t"},
		"CreateUser": &userv1.CreateUserRequest{User: &userv1.User{
			Id: "carol", DisplayName: "Carol", Email: "carol@example.com", Roles: []string{"customer"}, Active: true}},
		"UpdateUser one field": &userv1.UpdateUserRequest{User: &userv1.User{Id: "carol", DisplayName: "Carol C."},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}},
		"Watch":                &userv1.WatchUserChangesRequest{AfterSequence: 7},
		"Login empty password": &userv1.LoginRequest{Username: "admin"},
		"Login long ttl":       &userv1.LoginRequest{Username: "alice", Password: "pw", TtlSeconds: 86400},
		"ExchangeToken":        &tokenv1.ExchangeTokenRequest{SubjectToken: "a.b.c"},
		"CreateOrder":          &orderv1.CreateOrderRequest{UserId: "alice", Items: item("book-1", 1000)},
		"GetOrder":             &orderv1.GetOrderRequest{Id: "ord_abc"},
		"ListOrders":           &orderv1.ListOrdersRequest{UserId: "alice", PageSize: 10},
		"ImportOrders":         &orderv1.ImportOrdersRequest{UserId: "alice", Items: item("book-1", 1)},
		"TrackOrders":          &orderv1.TrackOrdersRequest{OrderId: "ord_abc"},
	}
	for name, msg := range valid {
		if err := v.Validate(msg); err != nil {
			t.Errorf("%s: valid request refused: %v", name, err)
		}
	}

	many := make([]*orderv1.LineItem, 101)
	for i := range many {
		many[i] = &orderv1.LineItem{Sku: "s", Quantity: 1}
	}
	invalid := map[string]struct {
		msg         proto.Message
		field, rule string
	}{
		"GetUser no id":          {&userv1.GetUserRequest{}, "id", "required"},
		"ListUsers negative":     {&userv1.ListUsersRequest{PageSize: -1}, "page_size", "int32.gte_lte"},
		"ListUsers 501":          {&userv1.ListUsersRequest{PageSize: 501}, "page_size", "int32.gte_lte"},
		"CreateUser no user":     {&userv1.CreateUserRequest{}, "user", "required"},
		"CreateUser bad id":      {&userv1.CreateUserRequest{User: &userv1.User{Id: "Carol", DisplayName: "C", Email: "c@example.com"}}, "user.id", "string.pattern"},
		"CreateUser no email":    {&userv1.CreateUserRequest{User: &userv1.User{Id: "carol", DisplayName: "C"}}, "user", "create_user.email_required"},
		"CreateUser bad email":   {&userv1.CreateUserRequest{User: &userv1.User{Id: "carol", DisplayName: "C", Email: "Carol <c@example.com>"}}, "user.email", "string.email"},
		"CreateUser bad role":    {&userv1.CreateUserRequest{User: &userv1.User{Id: "carol", DisplayName: "C", Email: "c@example.com", Roles: []string{"Admin"}}}, "user.roles[0]", "string.pattern"},
		"UpdateUser no mask":     {&userv1.UpdateUserRequest{User: &userv1.User{Id: "carol"}}, "update_mask", "required"},
		"UpdateUser bad path":    {&userv1.UpdateUserRequest{User: &userv1.User{Id: "carol"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"create_time"}}}, "update_mask", "field_mask.in"},
		"UpdateUser no id":       {&userv1.UpdateUserRequest{User: &userv1.User{}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"active"}}}, "user.id", "required"},
		"Watch negative":         {&userv1.WatchUserChangesRequest{AfterSequence: -1}, "after_sequence", "int64.gte"},
		"Login no username":      {&userv1.LoginRequest{Password: "pw"}, "username", "required"},
		"Login long username":    {&userv1.LoginRequest{Username: strings.Repeat("u", 65)}, "username", "string.max_bytes"},
		"Login negative ttl":     {&userv1.LoginRequest{Username: "alice", TtlSeconds: -1}, "ttl_seconds", "int64.gte"},
		"ExchangeToken no token": {&tokenv1.ExchangeTokenRequest{}, "subject_token", "required"},
		"CreateOrder no items":   {&orderv1.CreateOrderRequest{UserId: "alice"}, "items", "repeated.min_items"},
		"CreateOrder 101 items":  {&orderv1.CreateOrderRequest{UserId: "alice", Items: many}, "items", "repeated.max_items"},
		"CreateOrder quantity":   {&orderv1.CreateOrderRequest{UserId: "alice", Items: item("book-1", 0)}, "items[0].quantity", "int32.gte_lte"},
		"CreateOrder long sku":   {&orderv1.CreateOrderRequest{UserId: "alice", Items: item(strings.Repeat("s", 65), 1)}, "items[0].sku", "string.max_bytes"},
		"GetOrder no id":         {&orderv1.GetOrderRequest{}, "id", "required"},
		"ListOrders no user":     {&orderv1.ListOrdersRequest{}, "user_id", "required"},
		"ImportOrders no user":   {&orderv1.ImportOrdersRequest{Items: item("s", 1)}, "user_id", "required"},
		"TrackOrders long id":    {&orderv1.TrackOrdersRequest{OrderId: strings.Repeat("o", 65)}, "order_id", "string.max_len"},
	}
	for name, c := range invalid {
		err := v.Validate(c.msg)
		var verr *protovalidate.ValidationError
		if !errors.As(err, &verr) {
			t.Errorf("%s: %v, want a validation error", name, err)
			continue
		}
		found := false
		for _, viol := range verr.Violations {
			if protovalidate.FieldPathString(viol.Proto.GetField()) == c.field && viol.Proto.GetRuleId() == c.rule {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: %v, want %s [%s]", name, err, c.field, c.rule)
		}
	}
}

// TestSecretsAreRedacted: every field of the sample services (and of
// Palisade's TokenService) that holds a
// secret (a password, a token) is marked debug_redact, which keeps it out
// of the decision logs (authz.InputMask), so a new one cannot be added
// without deciding that it must never leave the process in clear.
func TestSecretsAreRedacted(t *testing.T) {
	t.Parallel()
	notSecret := map[string]bool{"page_token": true, "next_page_token": true}
	files := []protoreflect.FileDescriptor{
		userv1.File_user_v1_user_proto, userv1.File_user_v1_auth_proto, orderv1.File_order_v1_order_proto,
		tokenv1.File_palisade_token_v1_token_proto,
	}
	secrets := 0
	for _, f := range files {
		for i := 0; i < f.Messages().Len(); i++ {
			fields := f.Messages().Get(i).Fields()
			for j := 0; j < fields.Len(); j++ {
				fd := fields.Get(j)
				name := string(fd.Name())
				if notSecret[name] || !(strings.Contains(name, "password") || strings.Contains(name, "secret") || strings.HasSuffix(name, "token")) {
					continue
				}
				secrets++
				if opts, _ := fd.Options().(*descriptorpb.FieldOptions); !opts.GetDebugRedact() {
					t.Errorf("%s holds a secret and is not marked debug_redact", fd.FullName())
				}
			}
		}
	}
	if secrets < 4 {
		t.Fatalf("found %d secret fields, want at least 4 (password, subject_token, two access_token)", secrets)
	}
}
