package order_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/services/order"
)

func layer(t *testing.T) *policy.Bundle {
	t.Helper()
	b, err := policy.LoadFS(order.Policy(), "services/order/policy")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPolicy runs the rego tests of the order service's layer on the base
// policy, as the engine does before it loads it, and requires every one to
// pass and the layer's policy files to be fully covered.
func TestPolicy(t *testing.T) {
	t.Parallel()
	report, err := policy.RunTests(context.Background(), layer(t))
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if len(report.Results) < 10 {
		t.Fatalf("the layer has %d rego tests", len(report.Results))
	}
	for _, r := range report.Failed() {
		t.Errorf("rego test %s failed: %s", r.Name, r.Failure)
	}
	t.Logf("%d rego tests, %d failed; coverage of the layer's policy files %.1f%%",
		len(report.Results), len(report.Failed()), report.Coverage)
	if report.Coverage < 100 {
		t.Errorf("coverage %.1f%% < 100%%; lines not covered:\n\t%s",
			report.Coverage, strings.Join(report.NotCovered, "\n\t"))
	}
}

// TestPolicyRequestNeeded checks the layer's request_free claims against
// what requests do (rules of its test file, over data.palisade.testing: too
// many evaluations for the rego tests a load runs): every procedure, every
// principal, a range of requests. A decision the policy settles before the
// request must be the one every request gets — else the server would
// answer, or let through, a call on a decision its request would have
// changed — and a call that waits for its request must be one a request
// changes.
func TestPolicyRequestNeeded(t *testing.T) {
	t.Parallel()
	b, err := policy.Merge(policy.Base(), layer(t))
	if err != nil {
		t.Fatal(err)
	}
	const pkg = "data.palisade.order_test"
	opts := []func(*rego.Rego){rego.SetRegoVersion(ast.RegoV1), rego.Query(`x := {
		"changed": ` + pkg + `.settled_but_changed_by_a_request,
		"useless": ` + pkg + `.waiting_for_a_request_that_changes_nothing,
		"counts": ` + pkg + `.request_needed_counts,
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
	if n, _ := settled.Int64(); n < 55 {
		t.Errorf("only %s calls settled before their request", settled)
	}
	if n, _ := waiting.Int64(); n < 7 {
		t.Errorf("only %s calls wait for their request", waiting)
	}
}
