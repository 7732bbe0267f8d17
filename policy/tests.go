package policy

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
)

// TestResult is the outcome of one rego test rule.
type TestResult struct {
	Name string // package.test_name
	Pass bool
	// Failure says why a test did not pass: "fail" or the evaluation error;
	// "skipped" for a test OPA skips (todo_test_*), which counts as passed.
	Failure string
}

// skipped is the Failure of a skipped test.
const skipped = "skipped"

// TestReport is the outcome of a bundle's rego tests.
type TestReport struct {
	Results []TestResult
	// Coverage is the percentage of the policy lines (not the test files'
	// lines) that the tests evaluated; NotCovered lists the lines missed,
	// as "file:line".
	Coverage   float64
	NotCovered []string
}

// Passed reports whether every test passed.
func (r *TestReport) Passed() bool {
	for _, t := range r.Results {
		if !t.Pass {
			return false
		}
	}
	return true
}

// ran counts the tests that ran: all but the skipped ones.
func (r *TestReport) ran() int {
	n := 0
	for _, t := range r.Results {
		if t.Failure != skipped {
			n++
		}
	}
	return n
}

// Failed returns the tests that did not pass.
func (r *TestReport) Failed() []TestResult {
	var out []TestResult
	for _, t := range r.Results {
		if !t.Pass {
			out = append(out, t)
		}
	}
	return out
}

// parseModules parses every module of b as rego v1.
func parseModules(b *Bundle) (map[string]*ast.Module, error) {
	mods := make(map[string]*ast.Module, len(b.Modules))
	for name, src := range b.Modules {
		m, err := ast.ParseModuleWithOpts(name, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		mods[name] = m
	}
	return mods, nil
}

// RunTests runs the rego tests of layer (rules named test_* in any of its
// modules, conventionally in *_test.rego files) with OPA's tester, as an
// Engine made with opts would before loading it: on the base policy and
// layer (only layer, WithoutBase), with WithData's documents. It measures
// the coverage of layer's policy files.
func RunTests(ctx context.Context, layer *Bundle, opts ...EngineOption) (*TestReport, error) {
	var cfg engineConfig
	for _, o := range opts {
		o.applyEngine(&cfg)
	}
	mods, data, own, err := compose(layer, cfg)
	if err != nil {
		return nil, err
	}
	return runTests(ctx, mods, data, own, true)
}

// runTests runs the tests in mods (Base holds none: they are the layer's),
// with data, measuring the coverage of own's policy files only when asked:
// tracing every evaluation step makes the tests several times slower, and
// loading a policy only needs to know that they pass.
func runTests(ctx context.Context, mods map[string]*ast.Module, data map[string]any, own map[string]bool, coverage bool) (*TestReport, error) {
	runner := tester.NewRunner().
		SetStore(inmem.NewFromObject(data)).
		SetModules(mods)
	cov := cover.New()
	if coverage {
		runner = runner.SetCoverageQueryTracer(cov)
	}
	ch, err := runner.
		RaiseBuiltinErrors(true).
		// OPA's default is 5 s per test, which a loaded machine can exceed
		// while compiling; a hung test is still bounded.
		SetTimeout(2*time.Minute).
		RunTests(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("policy: tests: %w", err)
	}
	report := &TestReport{}
	for res := range ch {
		r := TestResult{Name: strings.TrimPrefix(res.Package, "data.") + "." + res.Name, Pass: res.Pass()}
		switch {
		case res.Error != nil:
			r.Failure = res.Error.Error()
		case res.Fail:
			r.Failure = "fail"
		case res.Skip:
			r.Pass, r.Failure = true, skipped
		}
		report.Results = append(report.Results, r)
	}
	sort.Slice(report.Results, func(i, j int) bool { return report.Results[i].Name < report.Results[j].Name })

	if !coverage {
		return report, nil
	}
	policyMods := map[string]*ast.Module{}
	for name, m := range mods {
		if own[name] && !IsTestFile(name) {
			policyMods[name] = m
		}
	}
	cr := cov.Report(policyMods)
	covered, total := 0, 0
	for file, fr := range cr.Files {
		if _, ok := policyMods[file]; !ok {
			continue // a test file: its lines do not count
		}
		covered += fr.CoveredLines
		total += fr.CoveredLines + fr.NotCoveredLines
		for _, rng := range fr.NotCovered {
			for line := rng.Start.Row; line <= rng.End.Row; line++ {
				report.NotCovered = append(report.NotCovered, fmt.Sprintf("%s:%d", file, line))
			}
		}
	}
	if total > 0 {
		report.Coverage = 100 * float64(covered) / float64(total)
	}
	sort.Strings(report.NotCovered)
	report.NotCovered = slices.Compact(report.NotCovered)
	return report, nil
}
