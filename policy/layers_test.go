package policy_test

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/policy"
)

// inventory is a small service's layer, as an adopter writes it: a rule
// for its one procedure, the procedure listed as acting for a user, and a
// test.
var inventory = map[string]string{
	"inventory.rego": `package palisade.authz

import data.palisade.lib

user_procedures contains "/inventory.v1.InventoryService/GetItem"

allow if {
	input.procedure == "/inventory.v1.InventoryService/GetItem"
	lib.direct
	lib.has_role("clerk")
}

deny_reasons contains "clerks only" if {
	input.procedure == "/inventory.v1.InventoryService/GetItem"
	lib.direct
	not lib.has_role("clerk")
}
`,
	"inventory_test.rego": `package palisade.inventory_test

import data.palisade.authz

test_clerk if authz.decision.allow with input as {"procedure": "/inventory.v1.InventoryService/GetItem", "token": {"sub": "c", "roles": ["clerk"]}}
`,
}

func layer(files map[string]string, extra ...string) *policy.Bundle {
	b := &policy.Bundle{Modules: map[string]string{}, Origin: "test layer"}
	for name, src := range files {
		b.Modules[name] = src
	}
	for i := 0; i+1 < len(extra); i += 2 {
		b.Modules[extra[i]] = extra[i+1]
	}
	return b
}

func decide(t *testing.T, e *policy.Engine, input string) map[string]any {
	t.Helper()
	d, err := e.Eval(context.Background(), ast.MustParseTerm(input).Value)
	if err != nil {
		t.Fatalf("eval %s: %v", input, err)
	}
	return map[string]any{"allow": d.Allow, "reasons": strings.Join(d.Reasons, "; "), "need_user": d.NeedsUser, "early": d.IgnoresRequest}
}

// TestLayerOnTheBase: a seven-line layer is all a new service writes. The
// base decides health for the trust domain and the need_user convention for
// the layer's procedure; the layer decides its own calls; only the layer's
// one test gates it (the base's own are not run again).
func TestLayerOnTheBase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := layer(inventory)
	l.Data = map[string]any{"palisade": map[string]any{"config": map[string]any{"trust_domain": "palisade.local"}}}
	e, err := policy.NewEngine(ctx, l, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	report, err := policy.RunTests(ctx, l)
	if err != nil || len(report.Results) != 1 || !report.Passed() {
		t.Fatalf("the layer's tests: %+v, %v; want its one test, passed", report, err)
	}
	// The coverage is the layer's: its deny_reasons rule is not tested.
	if report.Coverage == 0 || report.Coverage == 100 || !slices.Equal(report.NotCovered, []string{"inventory.rego:13", "inventory.rego:14", "inventory.rego:15", "inventory.rego:16"}) {
		t.Fatalf("coverage %.1f%%, not covered %v; want the layer's lines only", report.Coverage, report.NotCovered)
	}
	const getItem = `"procedure": "/inventory.v1.InventoryService/GetItem", "peer": {"spiffe_id": "spiffe://palisade.local/client/cli"}`
	for input, want := range map[string]map[string]any{
		`{"procedure": "/grpc.health.v1.Health/Check", "service": "grpc.health.v1.Health", "peer": {"spiffe_id": "spiffe://palisade.local/client/cli"}}`: {
			"allow": true, "reasons": "", "need_user": false, "early": true},
		`{"procedure": "/grpc.health.v1.Health/Check", "service": "grpc.health.v1.Health", "peer": {"spiffe_id": "spiffe://elsewhere.example/x"}}`: {
			"allow": false, "reasons": "workload spiffe://elsewhere.example/x is not in trust domain palisade.local", "need_user": false, "early": true},
		`{` + getItem + `}`: {
			"allow": false, "reasons": "a user token is required", "need_user": true, "early": true},
		`{` + getItem + `, "token": {"sub": "c", "roles": ["clerk"]}}`: {
			"allow": true, "reasons": "", "need_user": false, "early": false},
		`{` + getItem + `, "token": {"sub": "c", "roles": []}}`: {
			"allow": false, "reasons": "clerks only", "need_user": false, "early": false},
		`{"procedure": "/user.v1.UserService/GetUser", "token": {"sub": "admin", "roles": ["admin"]}}`: {
			"allow": false, "reasons": "no rule allows /user.v1.UserService/GetUser", "need_user": false, "early": true},
	} {
		if got := decide(t, e, input); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %v\nwant %v", input, got, want)
		}
	}
}

// TestLayerWithoutTestsRefused: the untested gate counts the layer's tests.
// The base's tests pass, but they are not the layer's: a layer without
// tests is refused, at start and on reload, unless WithUntestedPolicies.
func TestLayerWithoutTestsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	untested := layer(map[string]string{"inventory.rego": inventory["inventory.rego"]})
	if _, err := policy.NewEngine(ctx, untested, policy.WithLogger(slog.New(slog.DiscardHandler))); !errors.Is(err, policy.ErrUntested) {
		t.Fatalf("a layer without tests: %v, want ErrUntested", err)
	}
	// A test that is skipped (todo_) does not count either.
	skipped := layer(untested.Modules, "skip_test.rego", "package palisade.inventory_test\ntodo_test_later if false\n")
	if _, err := policy.NewEngine(ctx, skipped, policy.WithLogger(slog.New(slog.DiscardHandler))); !errors.Is(err, policy.ErrUntested) {
		t.Fatalf("a layer whose tests are all skipped: %v, want ErrUntested", err)
	}
	e, err := policy.NewEngine(ctx, layer(inventory), policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	good := e.Revision()
	if err := e.Load(ctx, untested); !errors.Is(err, policy.ErrUntested) || e.Revision() != good {
		t.Fatalf("reload of a layer without tests: %v, revision %s (was %s)", err, e.Revision(), good)
	}
	if _, err := policy.NewEngine(ctx, untested, policy.WithLogger(slog.New(slog.DiscardHandler)), policy.WithUntestedPolicies()); err != nil {
		t.Fatalf("WithUntestedPolicies: %v", err)
	}
}

// TestLayerMayNotRedefineTheBase: a layer that defines the decision, or
// any rule the decision is made of, or adds to the base's library, is
// refused when it is compiled — at start and on reload, the last good
// version staying in force — with an error that names the file, the line
// and the rule. (OPA alone would compile most of these and fail every
// evaluation with a conflict.)
func TestLayerMayNotRedefineTheBase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, err := policy.NewEngine(ctx, layer(inventory), policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	good := e.Revision()
	for name, c := range map[string]struct{ src, want string }{
		"decision":              {"package palisade.authz\ndecision := {\"allow\": true, \"reasons\": []}\n", "bad.rego:2: decision is the base policy's"},
		"decision, conditional": {"package palisade.authz\ndecision := {\"allow\": true, \"reasons\": []} if input.procedure == \"/x.v1.Y/Z\"\n", "bad.rego:2: decision is the base policy's"},
		"a key of the decision": {"package palisade.authz\ndecision.allow := true\n", "bad.rego:2: decision is the base policy's"},
		"decision in a package": {"package palisade.authz.decision\nallow := true\n", "bad.rego:2: decision is the base policy's"},
		"reasons":               {"package palisade.authz\nreasons := []\n", "bad.rego:2: reasons is the base policy's"},
		"need_user":             {"package palisade.authz\nneed_user := false\n", "bad.rego:2: need_user is the base policy's"},
		"request_needed":        {"package palisade.authz\nrequest_needed := false\n", "bad.rego:2: request_needed is the base policy's"},
		"default allow":         {"package palisade.authz\ndefault allow := true\n", "bad.rego:2: the default of allow is the base policy's"},
		"the library":           {"package palisade.lib\ndirect if true\n", "package palisade.lib belongs to the base policy"},
		"a library subpackage":  {"package palisade.lib.more\nx := 1\n", "package palisade.lib.more belongs to the base policy"},
		"the test helpers":      {"package palisade.testing\ndecide(x, y) := {}\n", "package palisade.testing belongs to the base policy"},
		"in a test file":        {"package palisade.authz\ndecision := {\"allow\": true, \"reasons\": []}\n", "bad.rego:2: decision is the base policy's"},
	} {
		file := "bad.rego"
		if name == "in a test file" {
			file = "bad_test.rego"
			c.want = strings.Replace(c.want, "bad.rego", "bad_test.rego", 1)
		}
		b := layer(inventory, file, c.src)
		_, err := policy.NewEngine(ctx, b, policy.WithLogger(slog.New(slog.DiscardHandler)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: NewEngine: %v, want an error with %q", name, err, c.want)
		}
		if err := e.Load(ctx, b); err == nil || e.Revision() != good {
			t.Errorf("%s: Load: %v; the revision in force is %s (was %s)", name, err, e.Revision(), good)
		}
		if _, err := policy.RunTests(ctx, b); err == nil {
			t.Errorf("%s: RunTests ran the tests of a layer that redefines the base", name)
		}
	}
	// Adding to what the layers share is what a layer does.
	for name, src := range map[string]string{
		"allow":           "package palisade.authz\nallow if input.procedure == \"/x.v1.Y/Z\"\n",
		"deny_reasons":    "package palisade.authz\ndeny_reasons contains \"no\" if input.procedure == \"/x.v1.Y/Z\"\n",
		"request_free":    "package palisade.authz\nrequest_free if input.procedure == \"/x.v1.Y/Z\"\n",
		"user_procedures": "package palisade.authz\nuser_procedures contains \"/x.v1.Y/Z\"\n",
		"own package":     "package palisade.inventory\nclerk if true\n",
		"a lib-like name": "package palisade.library\nx := 1\n",
	} {
		if _, err := policy.NewEngine(ctx, layer(inventory, "more.rego", src), policy.WithLogger(slog.New(slog.DiscardHandler))); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestWithoutBase: an engine made WithoutBase decides with its policy
// alone, which may then define the decision.
func TestWithoutBase(t *testing.T) {
	t.Parallel()
	e, err := quietEngine(t, bundle("authz.rego", allowAll, "authz_test.rego", "package palisade.authz_test\ntest_allows if data.palisade.authz.decision.allow\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := decide(t, e, `{"procedure": "/grpc.health.v1.Health/Check"}`); got["allow"] != true {
		t.Fatalf("the policy's own decision: %v", got)
	}
	// The same bundle as a layer redefines the base.
	if _, err := policy.NewEngine(context.Background(), bundle("authz.rego", allowAll, "authz_test.rego", "package palisade.authz_test\ntest_allows if true\n"), policy.WithLogger(slog.New(slog.DiscardHandler))); err == nil {
		t.Fatal("a complete policy was taken as a layer")
	}
}

// TestWithDataOverridesTheLayersData: configuration is data. The layer's
// data.json holds defaults, and WithData the deployment's values, which win:
// a workload added to the delegates there may exchange tokens, with no new
// version of the layer; the layer's tests run with that data too.
func TestWithDataOverridesTheLayersData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := layer(inventory)
	l.Data = map[string]any{"palisade": map[string]any{"config": map[string]any{
		"trust_domain": "palisade.local",
		"delegates":    []any{"spiffe://palisade.local/svc/order"},
	}}}
	const exchange = `{"procedure": "/palisade.token.v1.TokenService/ExchangeToken", "peer": {"spiffe_id": "spiffe://palisade.local/svc/billing"}}`
	plain, err := policy.NewEngine(ctx, l, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if got := decide(t, plain, exchange); got["allow"] != false || got["reasons"] != "workload spiffe://palisade.local/svc/billing may not exchange tokens" {
		t.Fatalf("billing without configuration: %v", got)
	}
	deployment := map[string]any{"palisade": map[string]any{"config": map[string]any{
		"delegates": []any{"spiffe://palisade.local/svc/order", "spiffe://palisade.local/svc/billing"},
	}}}
	configured, err := policy.NewEngine(ctx, l, policy.WithLogger(slog.New(slog.DiscardHandler)), policy.WithData(deployment))
	if err != nil {
		t.Fatal(err)
	}
	if got := decide(t, configured, exchange); got["allow"] != true {
		t.Fatalf("billing added to the delegates by data: %v", got)
	}
	// The layer's other defaults stay, and the layer's data is untouched.
	if got := decide(t, configured, `{"procedure": "/grpc.health.v1.Health/Check", "service": "grpc.health.v1.Health", "peer": {"spiffe_id": "spiffe://palisade.local/client/cli"}}`); got["allow"] != true {
		t.Fatalf("health with the layer's trust domain: %v", got)
	}
	if n := len(l.Data["palisade"].(map[string]any)["config"].(map[string]any)["delegates"].([]any)); n != 1 {
		t.Fatalf("WithData changed the layer's own data: %d delegates", n)
	}
	// Later WithData win over earlier ones; the layer's tests see the data.
	seesData := layer(map[string]string{
		"inventory.rego": inventory["inventory.rego"],
		"data_test.rego": "package palisade.inventory_test\ntest_data if data.palisade.config.trust_domain == \"example.org\"\n",
	})
	td := func(td string) map[string]any {
		return map[string]any{"palisade": map[string]any{"config": map[string]any{"trust_domain": td}}}
	}
	if _, err := policy.NewEngine(ctx, seesData, policy.WithLogger(slog.New(slog.DiscardHandler)), policy.WithData(td("palisade.local")), policy.WithData(td("example.org"))); err != nil {
		t.Fatalf("the layer's test did not see the data: %v", err)
	}
	if report, err := policy.RunTests(ctx, seesData, policy.WithData(td("palisade.local"))); err != nil || report.Passed() {
		t.Fatalf("RunTests ignored WithData: %+v %v", report, err)
	}
}

// TestMerge: modules and data of several bundles in one; two modules of one
// name, or two values of one key, are refused.
func TestMerge(t *testing.T) {
	t.Parallel()
	a := &policy.Bundle{Origin: "a", Modules: map[string]string{"a.rego": "package a\n"},
		Data: map[string]any{"palisade": map[string]any{"config": map[string]any{"x": 1.0, "list": []any{"p"}}}}}
	b := &policy.Bundle{Origin: "b", Modules: map[string]string{"b.rego": "package b\n"},
		Data: map[string]any{"palisade": map[string]any{"config": map[string]any{"y": 2.0, "list": []any{"p"}}}, "other": true}}
	m, err := policy.Merge(a, nil, b)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"palisade": map[string]any{"config": map[string]any{"x": 1.0, "y": 2.0, "list": []any{"p"}}}, "other": true}
	if len(m.Modules) != 2 || !reflect.DeepEqual(m.Data, want) || m.Origin != "a + b" {
		t.Fatalf("merged %+v", m)
	}
	if _, ok := a.Data["palisade"].(map[string]any)["config"].(map[string]any)["y"]; ok {
		t.Fatal("Merge changed its input")
	}
	for name, c := range map[string]struct {
		b    *policy.Bundle
		want string
	}{
		"same file":     {&policy.Bundle{Origin: "c", Modules: map[string]string{"a.rego": "package c\n"}}, "a.rego is in both a and c"},
		"base's file":   {&policy.Bundle{Origin: "c", Modules: map[string]string{"palisade/base.rego": "package c\n"}}, "palisade/base.rego is in both"},
		"other value":   {&policy.Bundle{Origin: "c", Data: map[string]any{"palisade": map[string]any{"config": map[string]any{"x": 3.0}}}}, "data conflict at data.palisade.config.x"},
		"other list":    {&policy.Bundle{Origin: "c", Data: map[string]any{"palisade": map[string]any{"config": map[string]any{"list": []any{"q"}}}}}, "data conflict at data.palisade.config.list"},
		"object, value": {&policy.Bundle{Origin: "c", Data: map[string]any{"palisade": "x"}}, "data conflict at data.palisade"},
	} {
		base := a
		if name == "base's file" {
			base = policy.Base()
		}
		if _, err := policy.Merge(base, c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// TestLoadFS reads a layer from an fs.FS as LoadDir does a directory.
func TestLoadFS(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"authz.rego":          {Data: []byte(inventory["inventory.rego"])},
		"sub/authz_test.rego": {Data: []byte(inventory["inventory_test.rego"])},
		"data.json":           {Data: []byte(`{"palisade": {"config": {"trust_domain": "palisade.local"}}}`)},
		".hidden.rego":        {Data: []byte("not rego")},
		"README.md":           {Data: []byte("# notes")},
	}
	b, err := policy.LoadFS(fsys, "embedded inventory")
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Modules) != 2 || b.Modules["sub/authz_test.rego"] == "" || b.Origin != "embedded inventory" || b.Data["palisade"] == nil {
		t.Fatalf("loaded %+v", b)
	}
	if _, err := policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.DiscardHandler))); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]fstest.MapFS{
		"no rego":       {"data.json": {Data: []byte(`{}`)}},
		"bad data.json": {"a.rego": {Data: []byte("package a\n")}, "data.json": {Data: []byte(`{`)}},
	} {
		if _, err := policy.LoadFS(bad, name); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want an error naming the origin", name, err)
		}
	}
}
