package policy_test

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/palisade-rpc/palisade/policy"
)

// TestDefaultPolicies runs the rego tests of the embedded policies
// (policy/rego/*_test.rego) and requires every one to pass and the policy
// files to be fully covered.
func TestDefaultPolicies(t *testing.T) {
	t.Parallel()
	b, err := policy.DefaultBundle()
	if err != nil {
		t.Fatalf("DefaultBundle: %v", err)
	}
	report, err := policy.RunTests(context.Background(), b)
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if len(report.Results) == 0 {
		t.Fatal("the default policies have no rego tests")
	}
	for _, r := range report.Failed() {
		t.Errorf("rego test %s failed: %s", r.Name, r.Failure)
	}
	t.Logf("%d rego tests, %d failed; coverage of the policy files %.1f%%",
		len(report.Results), len(report.Failed()), report.Coverage)
	if report.Coverage < 100 {
		t.Errorf("coverage %.1f%% < 100%%; lines not covered:\n\t%s",
			report.Coverage, strings.Join(report.NotCovered, "\n\t"))
	}
}

// TestDefaultPoliciesAreRegoV1 checks that every embedded module, tests
// included, is written in rego v1 syntax.
func TestDefaultPoliciesAreRegoV1(t *testing.T) {
	t.Parallel()
	b, err := policy.DefaultBundle()
	if err != nil {
		t.Fatalf("DefaultBundle: %v", err)
	}
	names := make([]string, 0, len(b.Modules))
	for name := range b.Modules {
		names = append(names, name)
	}
	sort.Strings(names)
	var policies, tests int
	for _, name := range names {
		if policy.IsTestFile(name) {
			tests++
		} else {
			policies++
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := ast.ParseModuleWithOpts(name, b.Modules[name], ast.ParserOptions{RegoVersion: ast.RegoV1}); err != nil {
				t.Errorf("not rego v1: %v", err)
			}
		})
	}
	if policies == 0 || tests == 0 {
		t.Errorf("embedded bundle has %d policy and %d test modules; want both", policies, tests)
	}
}

// TestDefaultPolicyRequestNeeded checks the shipped policy's request_needed
// against what requests do (rules of authz_test.rego, too many evaluations
// for the rego tests a load runs): every procedure, every principal, a
// range of requests. A decision the policy settles before the request must
// be the one every request gets — else the server would answer, or let
// through, a call on a decision its request would have changed — and a
// call that waits for its request must be one a request changes.
func TestDefaultPolicyRequestNeeded(t *testing.T) {
	t.Parallel()
	b, err := policy.DefaultBundle()
	if err != nil {
		t.Fatal(err)
	}
	opts := []func(*rego.Rego){rego.SetRegoVersion(ast.RegoV1), rego.Query(`x := {
		"changed": data.palisade.authz_test.settled_but_changed_by_a_request,
		"useless": data.palisade.authz_test.waiting_for_a_request_that_changes_nothing,
		"counts": data.palisade.authz_test.request_needed_counts,
	}`)}
	for name, src := range b.Modules {
		opts = append(opts, rego.Module(name, src))
	}
	rs, err := rego.New(opts...).Eval(context.Background())
	if err != nil || len(rs) != 1 {
		t.Fatalf("eval: %v (%d results)", err, len(rs))
	}
	got, _ := rs[0].Bindings["x"].(map[string]any)
	counts, _ := got["counts"].(map[string]any)
	t.Logf("calls settled before their request: %v; waiting for it: %v", counts["false"], counts["true"])
	if changed, _ := got["changed"].([]any); len(changed) > 0 {
		t.Errorf("%d decisions settled before the request differ with a request: %v", len(changed), changed)
	}
	if useless, _ := got["useless"].([]any); len(useless) > 0 {
		t.Errorf("%d calls wait for a request that changes nothing: %v", len(useless), useless)
	}
	settled, _ := counts["false"].(json.Number)
	waiting, _ := counts["true"].(json.Number)
	if n, _ := settled.Int64(); n < 150 {
		t.Errorf("only %s calls settled before their request", settled)
	}
	if n, _ := waiting.Int64(); n < 10 {
		t.Errorf("only %s calls wait for their request", waiting)
	}
}
