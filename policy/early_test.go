package policy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// TestEngineRequestNeeded: the engine reads request_needed from the
// decision document — absent means the request is needed, anything but a
// boolean is an error — and asks to decide before the request only when
// the policy mentions it (a test file mentioning it does not count).
func TestEngineRequestNeeded(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name           string
		modules        []string
		early, ignores bool
		fails          bool
	}{
		{name: "not set", modules: []string{"authz.rego", allowAll}},
		{name: "false", early: true, ignores: true, modules: []string{"authz.rego", `package palisade.authz
decision := {"allow": true, "reasons": [], "request_needed": false}
`}},
		{name: "true", early: true, modules: []string{"authz.rego", `package palisade.authz
decision := {"allow": true, "reasons": [], "request_needed": true}
`}},
		{name: "set through a rule head", early: true, ignores: true, modules: []string{"authz.rego", `package palisade.authz
decision.allow := true
decision.reasons := []
decision.request_needed := false
`}},
		{name: "not a boolean", early: true, fails: true, modules: []string{"authz.rego", `package palisade.authz
decision := {"allow": true, "reasons": [], "request_needed": "no"}
`}},
		{name: "only in a test", modules: []string{"authz.rego", allowAll, "authz_test.rego", `package palisade.authz_test
test_request_needed_unset if object.get(data.palisade.authz.decision, "request_needed", "unset") == "unset"
`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e, err := untestedEngine(t, bundle(c.modules...))
			if err != nil {
				t.Fatal(err)
			}
			if got := e.DecidesBeforeRequest(); got != c.early {
				t.Errorf("DecidesBeforeRequest = %v, want %v", got, c.early)
			}
			d, err := e.Eval(context.Background(), ast.MustParseTerm(`{"procedure": "/x.v1.X/Y"}`).Value)
			if c.fails {
				if err == nil || d.Allow || !strings.Contains(err.Error(), "request_needed") {
					t.Fatalf("decision %+v, error %v; want an error", d, err)
				}
				return
			}
			if err != nil || d.IgnoresRequest != c.ignores {
				t.Fatalf("decision %+v, error %v; want IgnoresRequest %v", d, err, c.ignores)
			}
		})
	}
}
