// Package layertest checks a sample service's policy layer in Go tests: its
// rego tests on the base policy with full coverage, and its request_free
// claims against what requests do.
package layertest

import (
	"context"
	"encoding/json"
	"io/fs"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/palisade-rpc/palisade/policy"
)

// Layer loads the layer in fsys (origin names it in errors).
func Layer(t *testing.T, fsys fs.FS, origin string) *policy.Bundle {
	t.Helper()
	b, err := policy.LoadFS(fsys, origin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Tests runs the rego tests of the layer on the base policy, as the engine
// does before it loads it, and requires at least minTests of them, every
// one to pass and the layer's policy files to be fully covered.
func Tests(t *testing.T, layer *policy.Bundle, minTests int) {
	t.Helper()
	report, err := policy.RunTests(context.Background(), layer)
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if len(report.Results) < minTests {
		t.Fatalf("the layer has %d rego tests, want at least %d", len(report.Results), minTests)
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

// RequestNeeded checks the layer's request_free claims against what
// requests do, through rules of the layer's test package pkg
// (settled_but_changed_by_a_request, waiting_for_a_request_that_changes_nothing,
// request_needed_counts, over data.palisade.testing: too many evaluations
// for the rego tests a load runs): every procedure, every principal, a
// range of requests. A decision the policy settles before the request must
// be the one every request gets — else the server would answer, or let
// through, a call on a decision its request would have changed — and a
// call that waits for its request must be one a request changes. At least
// minSettled calls must be settled before their request and minWaiting
// wait for it, so that the check cannot pass on an empty matrix.
func RequestNeeded(t *testing.T, layer *policy.Bundle, pkg string, minSettled, minWaiting int64) {
	t.Helper()
	b, err := policy.Merge(policy.Base(), layer)
	if err != nil {
		t.Fatal(err)
	}
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
	if n, _ := settled.Int64(); n < minSettled {
		t.Errorf("only %s calls settled before their request, want at least %d", settled, minSettled)
	}
	if n, _ := waiting.Int64(); n < minWaiting {
		t.Errorf("only %s calls wait for their request, want at least %d", waiting, minWaiting)
	}
}
