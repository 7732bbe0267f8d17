package authz_test

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	_ "google.golang.org/protobuf/types/known/structpb" // the test descriptor imports struct.proto
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// sampleInput is a call with every part of the input document: peer,
// delegated token, request, resource.
func sampleInput(t testing.TB, req proto.Message) *authz.Input {
	t.Helper()
	order, err := spiffeid.Parse("spiffe://palisade.local/svc/order")
	if err != nil {
		t.Fatal(err)
	}
	return &authz.Input{
		DecisionID: "d-1",
		Procedure:  "/user.v1.UserService/UpdateUser", Service: "user.v1.UserService", Method: "UpdateUser", StreamType: "unary",
		Principal: &security.Principal{
			Workload: security.Workload{ID: order, CertSHA256: [32]byte{0xab}},
			User: &security.User{Subject: "alice", Roles: []string{"customer"}, Audience: []string{"a"}, Issuer: "i",
				TokenID: "j", ExpiresAt: time.Unix(1790000000, 0), Actor: order.String(), CertBound: true},
			Token: security.NewSecret("eyJ.secret.token"),
		},
		Request:    req,
		Resource:   &authz.Resource{Kind: "order", ID: "o1", Owner: "alice"},
		HTTPMethod: "POST", Protocol: "grpc",
	}
}

// policyDocument is the input document package policy evaluates for in,
// less the erased paths: what a logged input must equal.
func policyDocument(t testing.TB, in *authz.Input, erased []string) ast.Value {
	t.Helper()
	doc, err := ast.JSON(policy.InputValue(in))
	if err != nil {
		t.Fatal(err)
	}
	// Later paths first: an array element erased after another of the same
	// array has the higher index, so removing it first keeps the other's.
	for _, p := range slices.Backward(erased) {
		removePath(t, doc, p)
	}
	v, err := ast.InterfaceToValue(doc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// removePath removes the value at mask path p ("/input/request/items/0")
// from doc.
func removePath(t testing.TB, doc any, p string) {
	t.Helper()
	segs := strings.Split(strings.TrimPrefix(p, "/input/"), "/")
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			t.Fatal(err)
		}
		segs[i] = u
	}
	parent := doc
	for _, s := range segs[:len(segs)-1] {
		switch v := parent.(type) {
		case map[string]any:
			parent = v[s]
		case []any:
			n, _ := strconv.Atoi(s)
			parent = v[n]
		}
	}
	last := segs[len(segs)-1]
	switch v := parent.(type) {
	case map[string]any:
		if _, ok := v[last]; !ok {
			t.Fatalf("erased path %s names nothing in the policy's document", p)
		}
		delete(v, last)
	default:
		t.Fatalf("erased path %s: parent %T", p, parent)
	}
}

// removeElement is removePath for array elements, which need their parent
// rewritten.
func removeElement(t testing.TB, doc any, p string) {
	t.Helper()
	i := strings.LastIndexByte(p, '/')
	n, err := strconv.Atoi(p[i+1:])
	if err != nil {
		t.Fatal(err)
	}
	segs := strings.Split(strings.TrimPrefix(p[:i], "/input/"), "/")
	parent := doc
	for _, s := range segs[:len(segs)-1] {
		parent = parent.(map[string]any)[s]
	}
	obj := parent.(map[string]any)
	arr := obj[segs[len(segs)-1]].([]any)
	obj[segs[len(segs)-1]] = slices.Delete(arr, n, n+1)
}

// logged parses a document AppendJSON wrote, as `palisade policy eval`
// does.
func logged(t testing.TB, doc []byte) ast.Value {
	t.Helper()
	if !json.Valid(doc) {
		t.Fatalf("not JSON: %s", doc)
	}
	v, err := ast.ValueFromReader(bytes.NewReader(doc))
	if err != nil {
		t.Fatalf("%v: %s", err, doc)
	}
	return v
}

// TestInputJSONIsWhatThePolicySees: the logged input document is the one
// package policy evaluates, member for member — the token's claims but not
// the token, the request with proto names, Timestamps, Durations and
// FieldMasks as the policy sees them — so `palisade policy eval` decides a
// logged call as the service did.
func TestInputJSONIsWhatThePolicySees(t *testing.T) {
	t.Parallel()
	for name, req := range map[string]proto.Message{
		"update": &userv1.UpdateUserRequest{
			User:       &userv1.User{Id: "alice", DisplayName: "A \"quoted\"\n\t\u2028<é>", Roles: []string{"x", "y"}, Active: true, CreateTime: timestamppb.New(time.Unix(1, 5))},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name", "roles"}},
		},
		"order":    &orderv1.CreateOrderRequest{UserId: "bob", Items: []*orderv1.LineItem{{Sku: "s", Quantity: 3}, {Sku: "t", Quantity: 1}}},
		"enum":     &orderv1.Order{Status: orderv1.OrderStatus_ORDER_STATUS_SHIPPED},
		"duration": &errdetails.RetryInfo{RetryDelay: durationpb.New(90*time.Second + time.Millisecond)},
		"none":     nil,
	} {
		in := sampleInput(t, req)
		if req == nil {
			in.Request, in.Resource, in.Principal.User = nil, nil, nil
		}
		doc, erased := (*authz.InputMask)(nil).AppendJSON(nil, in)
		if len(erased) != 0 {
			t.Errorf("%s: erased %v from a request with no sensitive field", name, erased)
		}
		if got, want := logged(t, doc), policy.InputValue(in); got.Compare(want) != 0 {
			t.Errorf("%s: logged input\n %s\nis not the policy's\n %s", name, got, want)
		}
		if strings.Contains(string(doc), "secret") || strings.Contains(string(doc), "eyJ") {
			t.Errorf("%s: the token reached the logged input: %s", name, doc)
		}
	}
}

// TestInputJSONLeavesOutSensitiveFields: request fields marked debug_redact
// — Login's password, the token exchange's subject token — never appear,
// whatever the mask, and are reported as erased.
func TestInputJSONLeavesOutSensitiveFields(t *testing.T) {
	t.Parallel()
	const password, subjectToken = "correct horse battery staple", "eyJhbGciOiJFZERTQSJ9.c3ViamVjdA.sig"
	mask, err := authz.NewInputMask("/input/token/sub")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req    proto.Message
		erased string
	}{
		{&userv1.LoginRequest{Username: "alice", Password: password, TtlSeconds: 60}, "/input/request/password"},
		{&tokenv1.ExchangeTokenRequest{SubjectToken: subjectToken, Audience: "spiffe://palisade.local/svc/user"}, "/input/request/subject_token"},
	} {
		for _, m := range []*authz.InputMask{nil, mask, {}} {
			in := sampleInput(t, c.req)
			doc, erased := m.AppendJSON(nil, in)
			if strings.Contains(string(doc), password) || strings.Contains(string(doc), subjectToken) {
				t.Fatalf("a sensitive field reached the logged input: %s", doc)
			}
			if !slices.Contains(erased, c.erased) {
				t.Errorf("erased %v, want %s among them", erased, c.erased)
			}
			if got, want := logged(t, doc), policyDocument(t, in, erased); got.Compare(want) != 0 {
				t.Errorf("logged input\n %s\nis not the policy's less %v\n %s", got, erased, want)
			}
		}
	}
}

// TestInputMask: a mask erases what its paths name — members, array
// elements by their index in the request, a whole well-known value it
// cannot descend into — reports each path it erased, and leaves an input
// it names nothing of as it is.
func TestInputMask(t *testing.T) {
	t.Parallel()
	req := &userv1.UpdateUserRequest{
		User:       &userv1.User{Id: "alice", DisplayName: "A", Email: "alice@example.com", Roles: []string{"x", "y", "z"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
	}
	for _, c := range []struct {
		paths, erased []string
		gone          []string // strings the document must not hold
	}{
		{paths: []string{"/input/request/user/email"}, erased: []string{"/input/request/user/email"}, gone: []string{"alice@example.com"}},
		{paths: []string{"/input/token/sub", "/input/token/act", "/input/peer"},
			erased: []string{"/input/peer", "/input/token/sub", "/input/token/act"}, gone: []string{`"sub"`, "spiffe_id", "cert_sha256"}},
		{paths: []string{"/input/request/user/roles/0", "/input/request/user/roles/2"},
			erased: []string{"/input/request/user/roles/0", "/input/request/user/roles/2"}, gone: []string{`"x"`, `"z"`}},
		{paths: []string{"/input/request/update_mask/0"}, erased: []string{"/input/request/update_mask"}, gone: []string{"display_name\"]"}},
		{paths: []string{"/input/request/nothing", "/input/request/user/id/deeper", "/input/resource/kind"}, erased: []string{"/input/resource/kind"}},
		{paths: []string{"/input/http"}, erased: []string{"/input/http"}, gone: []string{"grpc"}},
	} {
		m, err := authz.NewInputMask(c.paths...)
		if err != nil {
			t.Fatalf("%v: %v", c.paths, err)
		}
		in := sampleInput(t, req)
		doc, erased := m.AppendJSON(nil, in)
		if !slices.Equal(erased, c.erased) {
			t.Errorf("%v: erased %v, want %v", c.paths, erased, c.erased)
		}
		for _, g := range c.gone {
			if strings.Contains(string(doc), g) {
				t.Errorf("%v: %q still in %s", c.paths, g, doc)
			}
		}
		got := logged(t, doc)
		want, err := ast.JSON(policy.InputValue(in))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range slices.Backward(erased) {
			if _, err := strconv.Atoi(p[strings.LastIndexByte(p, '/')+1:]); err == nil {
				removeElement(t, want, p)
			} else {
				removePath(t, want, p)
			}
		}
		if w, err := ast.InterfaceToValue(want); err != nil || got.Compare(w) != 0 {
			t.Errorf("%v: logged input\n %s\nwant\n %s", c.paths, got, w)
		}
	}

	// "/input" erases the whole document: nothing is written.
	m, err := authz.NewInputMask("/input")
	if err != nil {
		t.Fatal(err)
	}
	if doc, erased := m.AppendJSON([]byte("x"), sampleInput(t, req)); string(doc) != "x" || !slices.Equal(erased, []string{"/input"}) {
		t.Errorf("mask /input: %q, erased %v", doc, erased)
	}
}

// TestInputMaskRefusesBadPaths: a path outside the input, or one that is
// not a path, is an error naming it.
func TestInputMaskRefusesBadPaths(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"", "input/request", "/inputs", "/result/allow", "/input/", "/input//x", "/input/request/%zz", "request/password"} {
		if _, err := authz.NewInputMask("/input/request/ok", p); err == nil || !strings.Contains(err.Error(), strconv.Quote(p)) {
			t.Errorf("NewInputMask(%q): %v, want an error naming it", p, err)
		}
	}
	if _, err := authz.NewInputMask("/input/request/a%2Fb", "/input/request/items/0"); err != nil {
		t.Errorf("escaped and index paths: %v", err)
	}
}

// everything is a message type with a field of every kind, maps, nested
// and repeated messages, well-known types, and sensitive fields at every
// depth, built at run time.
const everything = `
name: "palisade/test/everything.proto" package: "palisade.test" syntax: "proto3"
dependency: ["google/protobuf/timestamp.proto", "google/protobuf/duration.proto", "google/protobuf/field_mask.proto", "google/protobuf/struct.proto"]
enum_type { name: "Color" value { name: "COLOR_UNSPECIFIED" number: 0 } value { name: "COLOR_RED" number: 1 } }
message_type {
  name: "Item"
  field { name: "sku" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "secret" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING options { debug_redact: true } }
  field { name: "n" number: 3 label: LABEL_OPTIONAL type: TYPE_INT64 }
}
message_type {
  name: "Everything"
  field { name: "b" number: 1 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "s" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "by" number: 3 label: LABEL_OPTIONAL type: TYPE_BYTES }
  field { name: "e" number: 4 label: LABEL_OPTIONAL type: TYPE_ENUM type_name: ".palisade.test.Color" }
  field { name: "i32" number: 5 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "si32" number: 6 label: LABEL_OPTIONAL type: TYPE_SINT32 }
  field { name: "sf32" number: 7 label: LABEL_OPTIONAL type: TYPE_SFIXED32 }
  field { name: "i64" number: 8 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "si64" number: 9 label: LABEL_OPTIONAL type: TYPE_SINT64 }
  field { name: "sf64" number: 10 label: LABEL_OPTIONAL type: TYPE_SFIXED64 }
  field { name: "u32" number: 11 label: LABEL_OPTIONAL type: TYPE_UINT32 }
  field { name: "f32" number: 12 label: LABEL_OPTIONAL type: TYPE_FIXED32 }
  field { name: "u64" number: 13 label: LABEL_OPTIONAL type: TYPE_UINT64 }
  field { name: "f64" number: 14 label: LABEL_OPTIONAL type: TYPE_FIXED64 }
  field { name: "fl" number: 15 label: LABEL_OPTIONAL type: TYPE_FLOAT }
  field { name: "d" number: 16 label: LABEL_REPEATED type: TYPE_DOUBLE }
  field { name: "items" number: 17 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".palisade.test.Item" }
  field { name: "by_name" number: 18 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".palisade.test.Everything.ByNameEntry" }
  field { name: "labels" number: 19 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".palisade.test.Everything.LabelsEntry" }
  field { name: "ts" number: 21 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Timestamp" }
  field { name: "dur" number: 22 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Duration" }
  field { name: "fm" number: 23 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.FieldMask" }
  field { name: "st" number: 24 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Struct" }
  field { name: "password" number: 25 label: LABEL_OPTIONAL type: TYPE_STRING options { debug_redact: true } }
  field { name: "one" number: 26 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".palisade.test.Item" }
  field { name: "keys" number: 27 label: LABEL_REPEATED type: TYPE_BYTES options { debug_redact: true } }
  nested_type {
    name: "ByNameEntry" options { map_entry: true }
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".palisade.test.Item" }
  }
  nested_type {
    name: "LabelsEntry" options { map_entry: true }
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
  }
}`

func everythingType(t testing.TB) protoreflect.MessageDescriptor {
	t.Helper()
	var fdp descriptorpb.FileDescriptorProto
	if err := prototext.Unmarshal([]byte(everything), &fdp); err != nil {
		t.Fatal(err)
	}
	fd, err := protodesc.NewFile(&fdp, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().ByName("Everything")
}

// TestInputJSONEveryKind: a request with a field of every kind is logged
// as the policy sees it, its sensitive fields — top-level, in repeated and
// map-valued messages, a repeated field — erased, each under its path.
func TestInputJSONEveryKind(t *testing.T) {
	t.Parallel()
	md := everythingType(t)
	msg := dynamicpb.NewMessage(md)
	const secret = "top secret value"
	err := protojson.Unmarshal([]byte(`{
		"b": true, "s": "str\u0001\"", "by": "AAEC/w==", "e": "COLOR_RED", "i32": -5, "si32": -6, "sf32": -7,
		"i64": "-9007199254740993", "si64": "9223372036854775807", "sf64": "-1", "u32": 4294967295, "f32": 7,
		"u64": "18446744073709551615", "f64": "1", "fl": 0.1, "d": [1e300, -0.5, "NaN", "Infinity", "-Infinity", 3],
		"items": [{"sku": "a", "secret": "`+secret+`", "n": "1"}, {"sku": "b"}],
		"by_name": {"k/1": {"sku": "m", "secret": "`+secret+`"}, "": {"n": "2"}},
		"labels": {"-1": "minus one", "2": "two"},
		"ts": "2026-01-02T03:04:05.123Z", "dur": "3.5s", "fm": "a,b.c", "st": {"x": [1, "y", null, {"z": true}]},
		"password": "`+secret+`", "one": {"secret": "`+secret+`", "sku": "o"}, "keys": ["c2VjcmV0"]
	}`), msg)
	if err != nil {
		t.Fatal(err)
	}
	in := sampleInput(t, msg)
	doc, erased := (*authz.InputMask)(nil).AppendJSON(nil, in)
	if strings.Contains(string(doc), secret) || strings.Contains(string(doc), "c2VjcmV0") {
		t.Fatalf("a sensitive field reached the logged input: %s", doc)
	}
	slices.Sort(erased)
	want := []string{"/input/request/by_name/k%2F1/secret", "/input/request/items/0/secret", "/input/request/keys", "/input/request/one/secret", "/input/request/password"}
	if !slices.Equal(erased, want) {
		t.Errorf("erased %v, want %v", erased, want)
	}
	if got, want := logged(t, doc), policyDocument(t, in, erased); got.Compare(want) != 0 {
		t.Errorf("logged input\n %s\nis not the policy's less %v\n %s", got, erased, want)
	}
}

// FuzzInputJSON: whatever request arrives, the logged input is JSON and is
// the document the policy decides on. The requests are descriptor protos,
// which have fields of most kinds, nesting and repetition.
func FuzzInputJSON(f *testing.F) {
	for _, fd := range []protoreflect.FileDescriptor{userv1.File_user_v1_auth_proto, orderv1.File_order_v1_order_proto, descriptorpb.File_google_protobuf_descriptor_proto} {
		data, err := proto.Marshal(protodesc.ToFileDescriptorProto(fd))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req descriptorpb.FileDescriptorProto
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		if _, err := protojson.Marshal(&req); err != nil {
			return // invalid UTF-8 in a string: policy and log differ only in how they spell it
		}
		in := sampleInput(t, &req)
		doc, erased := (*authz.InputMask)(nil).AppendJSON(nil, in)
		if len(erased) != 0 {
			t.Fatalf("erased %v", erased)
		}
		if got, want := logged(t, doc), policy.InputValue(in); got.Compare(want) != 0 {
			t.Fatalf("logged input\n %s\nis not the policy's\n %s", got, want)
		}
	})
}

// BenchmarkInputJSON is the cost of rendering a call's input for a
// decision log, which happens on the call's goroutine.
func BenchmarkInputJSON(b *testing.B) {
	in := sampleInput(b, &userv1.UpdateUserRequest{
		User:       &userv1.User{Id: "alice", DisplayName: "Alice", Email: "alice@example.com", Roles: []string{"customer"}, Active: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name", "email"}},
	})
	mask, err := authz.NewInputMask("/input/request/user/email")
	if err != nil {
		b.Fatal(err)
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = mask.AppendJSON(buf[:0], in)
	}
	b.SetBytes(int64(len(buf)))
}
