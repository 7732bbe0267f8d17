package policy_test

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

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
