package policy_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/policy"
)

func bundle(modules ...string) *policy.Bundle {
	b := &policy.Bundle{Modules: map[string]string{}, Origin: "test"}
	for i := 0; i+1 < len(modules); i += 2 {
		b.Modules[modules[i]] = modules[i+1]
	}
	return b
}

const allowAll = `package palisade.authz
decision := {"allow": true, "reasons": []}
`

// quietEngine is an engine of a complete policy b, without the base: the
// tests of the engine's mechanics define the decision themselves.
func quietEngine(t *testing.T, b *policy.Bundle) (*policy.Engine, error) {
	t.Helper()
	return policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.DiscardHandler)), policy.WithoutBase())
}

// untestedEngine is quietEngine for a policy without rego tests, in tests
// of evaluation rather than of loading.
func untestedEngine(t *testing.T, b *policy.Bundle) (*policy.Engine, error) {
	t.Helper()
	return policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.DiscardHandler)), policy.WithUntestedPolicies(), policy.WithoutBase())
}

// TestEngineFailsClosed: every way a policy can fail to give a well-formed
// decision is an error, which the interceptor turns into a denial.
func TestEngineFailsClosed(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"evaluation error": `package palisade.authz
decision := {"allow": to_number(input.procedure) > 0, "reasons": []}
`,
		"undefined decision": `package palisade.authz
decision := {"allow": true, "reasons": []} if input.never_set
`,
		"non-boolean allow": `package palisade.authz
decision := {"allow": "yes", "reasons": []}
`,
		"allow missing": `package palisade.authz
decision := {"reasons": []}
`,
		"reasons not an array": `package palisade.authz
decision := {"allow": true, "reasons": "because"}
`,
		"reason not a string": `package palisade.authz
decision := {"allow": true, "reasons": [1]}
`,
		"decision not an object": `package palisade.authz
decision := true
`,
		"conflicting decisions": `package palisade.authz
decision := {"allow": true, "reasons": []} if input.procedure
decision := {"allow": false, "reasons": []} if input.procedure
`,
	}
	for name, src := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e, err := untestedEngine(t, bundle("authz.rego", src))
			if err != nil {
				t.Fatalf("engine: %v", err)
			}
			d, err := e.Eval(context.Background(), ast.MustParseTerm(`{"procedure": "/x.v1.X/Y"}`).Value)
			if err == nil {
				t.Fatalf("decision %+v, want an error", d)
			}
			if d.Allow {
				t.Fatal("an erroneous decision allows")
			}
		})
	}
}

func TestEngineLoadRefusesBadPolicies(t *testing.T) {
	t.Parallel()
	e, err := quietEngine(t, bundle("authz.rego", allowAll, "authz_test.rego", `package palisade.authz_test
test_allows if data.palisade.authz.decision.allow
`))
	if err != nil {
		t.Fatal(err)
	}
	good := e.Revision()
	refused := map[string]*policy.Bundle{
		"syntax error":  bundle("authz.rego", "package palisade.authz\ndecision := {"),
		"not rego v1":   bundle("authz.rego", "package palisade.authz\ndecision = {\"allow\": true, \"reasons\": []} { true }\n"),
		"failing test":  bundle("authz.rego", allowAll, "authz_test.rego", "package palisade.authz_test\ntest_denies if not data.palisade.authz.decision.allow\n"),
		"erroring test": bundle("authz.rego", allowAll, "authz_test.rego", "package palisade.authz_test\ntest_err if to_number(\"x\")\n"),
		"unsafe var":    bundle("authz.rego", "package palisade.authz\ndecision := {\"allow\": x, \"reasons\": []}\n"),
		"no tests":      bundle("authz.rego", allowAll),
		"skipped tests": bundle("authz.rego", allowAll, "authz_test.rego", "package palisade.authz_test\ntodo_test_allows if data.palisade.authz.decision.allow\n"),
	}
	for name, b := range refused {
		if err := e.Load(context.Background(), b); err == nil {
			t.Errorf("%s: loaded", name)
		}
		if e.Revision() != good {
			t.Fatalf("%s: revision changed to %s", name, e.Revision())
		}
	}
	next := bundle("authz.rego", strings.Replace(allowAll, "true", "false", 1), "authz_test.rego", "package palisade.authz_test\ntest_denies if not data.palisade.authz.decision.allow\n")
	if err := e.Load(context.Background(), next); err != nil || e.Revision() != next.Revision() {
		t.Fatalf("good policy: %v, revision %s", err, e.Revision())
	}
}
