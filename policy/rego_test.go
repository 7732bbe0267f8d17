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

// TestBasePolicy runs the base policy's own rego tests
// (policy/rego/base_test.rego) and requires every one to pass and the base's
// policy files to be fully covered.
func TestBasePolicy(t *testing.T) {
	t.Parallel()
	report, err := policy.RunTests(context.Background(), policy.BaseWithTests(), policy.WithoutBase())
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if len(report.Results) < 20 {
		t.Fatalf("the base policy has %d rego tests", len(report.Results))
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

// TestBaseIsRegoV1 checks that every module of the base, tests included,
// is written in rego v1 syntax, and that Base leaves the base's own tests
// out: they are not a layer's to run.
func TestBaseIsRegoV1(t *testing.T) {
	t.Parallel()
	b := policy.BaseWithTests()
	names := make([]string, 0, len(b.Modules))
	for name := range b.Modules {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := ast.ParseModuleWithOpts(name, b.Modules[name], ast.ParserOptions{RegoVersion: ast.RegoV1}); err != nil {
				t.Errorf("not rego v1: %v", err)
			}
		})
	}
	want := []string{"palisade/base.rego", "palisade/base_test.rego", "palisade/lib.rego", "palisade/testing_test.rego"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("base files %v, want %v", names, want)
	}
	if _, ok := policy.Base().Modules["palisade/base_test.rego"]; ok {
		t.Error("Base holds the base's own tests")
	}
}

// requestNeededChecks is what the request_needed checks of a test package
// found: the calls settled before their request that a request changes, the
// calls that wait for a request that changes nothing, and how many calls
// were settled early and how many waited.
type requestNeededChecks struct {
	changed, useless []any
	settled, waiting int64
}

// checkRequestNeeded evaluates the request_needed checks of the test
// package pkg (rules of its test file, over data.palisade.testing's
// helpers: too many evaluations for the rego tests a load runs) over b.
func checkRequestNeeded(t *testing.T, b *policy.Bundle, pkg string) requestNeededChecks {
	t.Helper()
	opts := []func(*rego.Rego){rego.SetRegoVersion(ast.RegoV1), rego.Query(`x := {
		"changed": data.` + pkg + `.settled_but_changed_by_a_request,
		"useless": data.` + pkg + `.waiting_for_a_request_that_changes_nothing,
		"counts": data.` + pkg + `.request_needed_counts,
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
	var c requestNeededChecks
	c.changed, _ = got["changed"].([]any)
	c.useless, _ = got["useless"].([]any)
	settled, _ := counts["false"].(json.Number)
	waiting, _ := counts["true"].(json.Number)
	c.settled, _ = settled.Int64()
	c.waiting, _ = waiting.Int64()
	return c
}

// TestBaseRequestNeeded checks the base's request_needed against what
// requests do: its own procedures, one a layer says acts for a user and an
// unknown one, every kind of caller, a range of requests. Everything the
// base decides, it decides before the request.
func TestBaseRequestNeeded(t *testing.T) {
	t.Parallel()
	c := checkRequestNeeded(t, policy.BaseWithTests(), "palisade.base_test")
	t.Logf("calls settled before their request: %d; waiting for it: %d", c.settled, c.waiting)
	if len(c.changed) > 0 {
		t.Errorf("%d decisions settled before the request differ with a request: %v", len(c.changed), c.changed)
	}
	if c.settled < 50 || c.waiting != 0 {
		t.Errorf("%d calls settled before their request and %d waiting; want every one settled", c.settled, c.waiting)
	}
}

// TestRequestNeededCheckCatchesWideClaims: the helpers of
// data.palisade.testing find a layer's request_free claim that covers a
// call whose request changes its decision, and a call that waits for a
// request that changes nothing.
func TestRequestNeededCheckCatchesWideClaims(t *testing.T) {
	t.Parallel()
	layer := `package palisade.authz
allow if {
	input.procedure == "/t.v1.T/Own"
	input.request.id == input.token.sub
}
deny_reasons contains "only your own" if {
	input.procedure == "/t.v1.T/Own"
	not allow
}
allow if input.procedure == "/t.v1.T/Open"
`
	checks := `package palisade.layer_test
import data.palisade.testing
calls := {{"procedure": p, "token": {"sub": "alice"}} | some p in ["/t.v1.T/Own", "/t.v1.T/Open"]}
requests := [{}, {"id": "alice"}]
settled_but_changed_by_a_request := testing.settled_but_changed(calls, requests, {})
waiting_for_a_request_that_changes_nothing := testing.waiting_for_nothing(calls, requests, {})
request_needed_counts := testing.request_needed_counts(calls, {})
`
	for name, c := range map[string]struct {
		claim            string
		changed, useless bool // whether the checks find any
	}{
		"claims too much":   {claim: "request_free if input.procedure == \"/t.v1.T/Own\"\nrequest_free if input.procedure == \"/t.v1.T/Open\"\n", changed: true},
		"claims too little": {useless: true},
		"claims right":      {claim: "request_free if input.procedure == \"/t.v1.T/Open\"\n"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := policy.Merge(policy.Base(), &policy.Bundle{Modules: map[string]string{"layer.rego": layer + c.claim, "layer_test.rego": checks}})
			if err != nil {
				t.Fatal(err)
			}
			got := checkRequestNeeded(t, b, "palisade.layer_test")
			if (len(got.changed) > 0) != c.changed || (len(got.useless) > 0) != c.useless {
				t.Fatalf("changed %v, useless %v; want changes %v, useless waits %v", got.changed, got.useless, c.changed, c.useless)
			}
		})
	}
}
