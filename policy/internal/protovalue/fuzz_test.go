package protovalue_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/palisade-rpc/palisade/policy/internal/protovalue"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// sampleMessages are the message types of the sample services' protos,
// requests, responses and the messages inside them, in file order.
func sampleMessages(tb testing.TB) []protoreflect.MessageType {
	tb.Helper()
	var out []protoreflect.MessageType
	for _, file := range []protoreflect.FileDescriptor{userv1.File_user_v1_user_proto, userv1.File_user_v1_auth_proto, orderv1.File_order_v1_order_proto} {
		msgs := file.Messages()
		for i := range msgs.Len() {
			mt, err := protoregistry.GlobalTypes.FindMessageByName(msgs.Get(i).FullName())
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, mt)
		}
	}
	return out
}

// FuzzMessageValue builds the policy input's request document from
// arbitrary bytes unmarshalled into each sample message type (the first
// argument picks the type). Message must not panic, and the document
// must survive the trip through JSON that a decision log or `opa eval` input
// takes: ast.JSON, json.Marshal, and back with ast to an equal value.
func FuzzMessageValue(f *testing.F) {
	types := sampleMessages(f)
	index := map[protoreflect.FullName]uint8{}
	for i, mt := range types {
		index[mt.Descriptor().FullName()] = uint8(i)
	}
	for _, m := range []proto.Message{
		&orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 2}, {Sku: "", Quantity: -1}}},
		&orderv1.ListOrdersRequest{UserId: "bob", PageSize: 10, PageToken: "\x00"},
		&userv1.GetUserRequest{Id: "alice"},
		&userv1.UpdateUserRequest{
			User:       &userv1.User{Id: "alice", Roles: []string{"admin", "\u202e"}, Active: true, CreateTime: &timestamppb.Timestamp{Seconds: -62135596801, Nanos: 999999999}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name", "roles", ""}},
		},
		&userv1.LoginRequest{Username: "admin", Password: "x"},
	} {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(index[m.ProtoReflect().Descriptor().FullName()], data)
	}
	f.Add(uint8(0), []byte{0x0a, 0x80, 0x01})             // a length past the end
	f.Add(uint8(1), []byte{0xf8, 0xff, 0xff, 0xff, 0x0f}) // an unknown field
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		mt := types[int(which)%len(types)]
		m := mt.New().Interface()
		if err := proto.Unmarshal(data, m); err != nil {
			return
		}
		v := protovalue.Message(m.ProtoReflect())
		if _, ok := v.(ast.Object); !ok {
			t.Fatalf("%s: request document is a %T, want an object", mt.Descriptor().FullName(), v)
		}
		native, err := ast.JSON(v)
		if err != nil {
			t.Fatalf("%s: ast.JSON: %v", mt.Descriptor().FullName(), err)
		}
		text, err := json.Marshal(native)
		if err != nil {
			t.Fatalf("%s: json.Marshal: %v", mt.Descriptor().FullName(), err)
		}
		back, err := ast.ValueFromReader(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("%s: %s does not parse back: %v", mt.Descriptor().FullName(), text, err)
		}
		if back.Compare(v) != 0 {
			t.Fatalf("%s: JSON round trip changed the document:\n%s\n%s", mt.Descriptor().FullName(), v, back)
		}
	})
}
