package policy

import (
	"context"
	"io/fs"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/authz"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/user"
)

func TestCacheableRefusesNondeterministicPolicies(t *testing.T) {
	t.Parallel()
	parse := func(src string) map[string]*ast.Module {
		m, err := ast.ParseModuleWithOpts("p.rego", src, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]*ast.Module{"p.rego": m}
	}
	for src, want := range map[string]string{
		"package p\nallow if time.now_ns() > 0\n":                            "time.now_ns",
		"package p\nallow if { x := http.send({\"method\": \"get\"}); x }\n": "http.send",
		"package p\nf(x) := rand.intn(\"s\", x)\nallow if f(3) > 1\n":        "rand.intn",
		"package p\nallow if uuid.rfc4122(\"k\")\n":                          "uuid.rfc4122",
	} {
		if ok, found := cacheable(parse(src)); ok || found != want {
			t.Errorf("%q: cacheable %v (%q), want refused for %s", src, ok, found, want)
		}
	}
	for name, layer := range map[string]fs.FS{"user": user.Policy(), "order": order.Policy()} {
		mods, _, _, err := compose(mustLoadFS(t, layer, name), engineConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if ok, found := cacheable(mods); !ok {
			t.Fatalf("the base and the %s layer should be cacheable; they call %s", name, found)
		}
	}
}

// TestCacheKeyCoversTheInput: changing any field the input document carries
// changes the key, so no two inputs can share a cached decision.
func TestCacheKeyCoversTheInput(t *testing.T) {
	t.Parallel()
	cli, _ := spiffeid.Parse("spiffe://palisade.local/client/cli")
	other, _ := spiffeid.Parse("spiffe://palisade.local/client/other")
	base := func() *authz.Input {
		return &authz.Input{
			Procedure: "/user.v1.UserService/GetUser", Service: "user.v1.UserService", Method: "GetUser", StreamType: "unary",
			Principal: &security.Principal{
				Workload: security.Workload{ID: cli, CertSHA256: [32]byte{1}},
				User: &security.User{Subject: "alice", Roles: []string{"customer"}, Scope: "s", Audience: []string{"a"}, Issuer: "i",
					TokenID: "j", ExpiresAt: time.Unix(1790000000, 0), Actor: "", CertBound: true},
			},
			Request:    &userv1.GetUserRequest{Id: "alice"},
			Resource:   &authz.Resource{Kind: "order", ID: "o", Owner: "alice"},
			HTTPMethod: "POST", Protocol: "connect",
		}
	}
	mutations := map[string]func(*authz.Input){
		"procedure":                  func(in *authz.Input) { in.Procedure = "/user.v1.UserService/ListUsers" },
		"service":                    func(in *authz.Input) { in.Service = "x" },
		"method":                     func(in *authz.Input) { in.Method = "x" },
		"stream type":                func(in *authz.Input) { in.StreamType = "server_stream" },
		"http method":                func(in *authz.Input) { in.HTTPMethod = "GET" },
		"protocol":                   func(in *authz.Input) { in.Protocol = "grpc" },
		"workload":                   func(in *authz.Input) { in.Principal.Workload.ID = other },
		"cert hash":                  func(in *authz.Input) { in.Principal.Workload.CertSHA256[31] = 9 },
		"no user":                    func(in *authz.Input) { in.Principal.User = nil },
		"subject":                    func(in *authz.Input) { in.Principal.User.Subject = "bob" },
		"roles":                      func(in *authz.Input) { in.Principal.User.Roles = []string{"admin"} },
		"more roles":                 func(in *authz.Input) { in.Principal.User.Roles = []string{"customer", "admin"} },
		"scope":                      func(in *authz.Input) { in.Principal.User.Scope = "t" },
		"audience":                   func(in *authz.Input) { in.Principal.User.Audience = nil },
		"issuer":                     func(in *authz.Input) { in.Principal.User.Issuer = "j" },
		"token id":                   func(in *authz.Input) { in.Principal.User.TokenID = "k" },
		"expiry":                     func(in *authz.Input) { in.Principal.User.ExpiresAt = time.Unix(1790000001, 0) },
		"actor":                      func(in *authz.Input) { in.Principal.User.Actor = "spiffe://palisade.local/svc/order" },
		"bound":                      func(in *authz.Input) { in.Principal.User.CertBound = false },
		"request":                    func(in *authz.Input) { in.Request = &userv1.GetUserRequest{Id: "bob"} },
		"request of the same length": func(in *authz.Input) { in.Request = &userv1.GetUserRequest{Id: "admin"} },
		"no request":                 func(in *authz.Input) { in.Request = nil },
		"request type": func(in *authz.Input) {
			in.Request = &userv1.WatchUserChangesRequest{} // same (empty) encoding as GetUserRequest{}
		},
		"resource owner": func(in *authz.Input) { in.Resource.Owner = "bob" },
		"no resource":    func(in *authz.Input) { in.Resource = nil },
		// Field boundaries: moving a byte from one string to the next must not collide.
		"boundary": func(in *authz.Input) { in.Service, in.Method = "user.v1.UserServiceG", "etUser" },
	}
	baseKey, ok := cacheKey(base())
	if !ok {
		t.Fatal("no key for the base input")
	}
	emptyReq := base()
	emptyReq.Request = &userv1.GetUserRequest{}
	emptyKey, _ := cacheKey(emptyReq)
	for name, mutate := range mutations {
		in := base()
		mutate(in)
		key, ok := cacheKey(in)
		if !ok || key == baseKey || (name == "request type" && key == emptyKey) {
			t.Errorf("%s: the key did not change", name)
		}
	}
	if again, _ := cacheKey(base()); again != baseKey {
		t.Fatal("the same input gave two keys")
	}
}

func mustLoadFS(t *testing.T, fsys fs.FS, origin string) *Bundle {
	t.Helper()
	b, err := LoadFS(fsys, origin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCachedDecisionsFollowTheInput: with the cache on, alice reading
// herself is allowed and reading bob denied, however the calls interleave,
// and a reload discards what the old version decided.
func TestCachedDecisionsFollowTheInput(t *testing.T) {
	t.Parallel()
	e, err := NewEngine(context.Background(), mustLoadFS(t, user.Policy(), "user"), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if e.cur.Load().cache == nil {
		t.Fatal("the user service's policy runs without a decision cache")
	}
	cli, _ := spiffeid.Parse("spiffe://palisade.local/client/cli")
	in := func(id string) *authz.Input {
		return &authz.Input{Procedure: "/user.v1.UserService/GetUser", Service: "user.v1.UserService", Method: "GetUser", StreamType: "unary",
			Principal: &security.Principal{Workload: security.Workload{ID: cli},
				User: &security.User{Subject: "alice", Roles: []string{"customer"}, ExpiresAt: time.Now().Add(time.Hour)}},
			Request: &userv1.GetUserRequest{Id: id}, HTTPMethod: "POST", Protocol: "connect"}
	}
	for i := 0; i < 3; i++ {
		for id, want := range map[string]bool{"alice": true, "bob": false} {
			cached, err := e.Decide(context.Background(), in(id))
			if err != nil || cached.Allow != want {
				t.Fatalf("round %d, %s: %+v %v", i, id, cached, err)
			}
			fresh, err := e.Eval(context.Background(), InputValue(in(id)))
			if err != nil || !reflect.DeepEqual(cached, fresh) {
				t.Fatalf("cached %+v, evaluated %+v", cached, fresh)
			}
		}
	}
	denyAll := &Bundle{Modules: map[string]string{
		"a.rego":      "package palisade.authz\ndeny_reasons contains \"closed\"\n",
		"a_test.rego": "package palisade.authz_test\ntest_closed if not data.palisade.authz.decision.allow\n",
	}}
	if err := e.Load(context.Background(), denyAll); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Decide(context.Background(), in("alice")); d.Allow {
		t.Fatal("a decision of the previous policy version was served from the cache")
	}
}
