package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/policy"
)

// loadLayer reads the policy layer in dir: a service's own rules, which the
// engine runs on the base policy.
func loadLayer(dir string) (*policy.Bundle, error) {
	if dir == "" {
		return nil, errors.New("name the directory of a service's policy layer (the samples': services/user/policy, services/order/policy)")
	}
	return policy.LoadDir(dir)
}

func policyEval(args []string) error {
	fs := newFlagSet("palisade policy eval", `Evaluate the authorization decision for one input document and print the
decision, its reasons and the rules that fired, for a person debugging a
denial. The input is the document the services build for every call (see
DESIGN.md, "Policy input", which shows one for each kind of caller); copy one
from a service's decision log line (a kit service with --decision-log-input;
authz.WithDecisionLogInput in Go) or write it by hand:

  {"procedure": "/user.v1.UserService/GetUser", "service": "user.v1.UserService",
   "method": "GetUser", "stream_type": "unary",
   "peer": {"spiffe_id": "spiffe://palisade.local/client/cli"},
   "token": {"sub": "alice", "roles": ["customer"], "act": null},
   "request": {"id": "bob"}, "http": {"method": "POST", "protocol": "connect"}}

--input may also hold one event as a decision log service received it
(authz/decisionlog, OPA's format: an object with "decision_id" and "input"):
its input is evaluated. Paths the service's mask erased from it ("erased")
are missing, so the decision may differ from the logged one; they are
listed in the output.

The policy is Palisade's base policy and the service's layer in --policy-dir
(the samples': services/user/policy, services/order/policy); they must
compile, and the layer pass its own tests, as they would to be loaded by a
service.`)
	input := fs.String("input", "", "`file` holding the input document, or one decision log event, as JSON (\"-\" for stdin; required)")
	dir := fs.String("policy-dir", "", "`directory` of the service's policy layer (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *input == "" {
		return errors.New("--input is required")
	}
	var data []byte
	var err error
	if *input == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		data, err = os.ReadFile(*input)
	}
	if err != nil {
		return err
	}
	value, erased, err := evalInput(data)
	if err != nil {
		return err
	}
	b, err := loadLayer(*dir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	engine, err := policy.NewEngine(ctx, b, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return err
	}
	d, fired, err := engine.Explain(ctx, value)
	out := struct {
		Allow       bool     `json:"allow"`
		Reasons     []string `json:"reasons"`
		Error       string   `json:"error,omitempty"`
		RulesFired  []string `json:"rules_fired"`
		Revision    string   `json:"policy_revision"`
		PolicyFiles string   `json:"policy"`
		Erased      []string `json:"input_erased,omitempty"`
	}{Allow: d.Allow, Reasons: d.Reasons, RulesFired: fired, Revision: engine.Revision(), PolicyFiles: b.Origin, Erased: erased}
	if out.Reasons == nil {
		out.Reasons = []string{}
	}
	if err != nil {
		out.Error = err.Error() + " (the services deny when this happens)"
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// evalInput reads the input document of `policy eval` from data: the
// document itself, or the "input" of a decision log event (an object with
// "decision_id" and "input"), with the paths erased from it.
func evalInput(data []byte) (ast.Value, []string, error) {
	value, err := ast.ValueFromReader(bytes.NewReader(data))
	if err != nil {
		return nil, nil, fmt.Errorf("input: %w", err)
	}
	obj, ok := value.(ast.Object)
	if !ok {
		return nil, nil, errors.New("input: not a JSON object (one input document, or one decision log event)")
	}
	if obj.Get(ast.StringTerm("decision_id")) == nil {
		return obj, nil, nil // an input document: it has no decision_id
	}
	var erased []string
	if e := obj.Get(ast.StringTerm("erased")); e != nil {
		if err := ast.As(e.Value, &erased); err != nil {
			return nil, nil, fmt.Errorf("input: the event's erased: %w", err)
		}
	}
	in := obj.Get(ast.StringTerm("input"))
	if in == nil {
		if slices.Contains(erased, "/input") {
			return nil, nil, errors.New("input: the event's whole input was erased by the service's mask")
		}
		return nil, nil, errors.New("input: a decision log event without an input")
	}
	if _, ok := in.Value.(ast.Object); !ok {
		return nil, nil, errors.New("input: the event's input is not a JSON object")
	}
	return in.Value, erased, nil
}

func policyTest(args []string) error {
	fs := newFlagSet("palisade policy test", `Run the rego tests (*_test.rego) of a service's policy layer in DIR — on
Palisade's base policy, as the service runs it — through OPA's tester, and
report each result and the coverage of the layer's policy files. Exits
non-zero if a test fails.

Usage: palisade policy test DIR   (the samples': services/user/policy, services/order/policy)`)
	verbose := fs.Bool("v", false, "list every test, not only failures")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return errors.New("one directory")
	}
	b, err := loadLayer(fs.Arg(0))
	if err != nil {
		return err
	}
	report, err := policy.RunTests(context.Background(), b)
	if err != nil {
		return err
	}
	for _, r := range report.Results {
		if !r.Pass {
			fmt.Printf("FAIL %s: %s\n", r.Name, r.Failure)
		} else if *verbose {
			fmt.Printf("PASS %s\n", r.Name)
		}
	}
	failed := len(report.Failed())
	fmt.Printf("%s: %d tests, %d passed, %d failed; coverage %.1f%%\n", b.Origin, len(report.Results), len(report.Results)-failed, failed, report.Coverage)
	for _, line := range report.NotCovered {
		fmt.Printf("  not covered: %s\n", line)
	}
	if failed > 0 {
		return fmt.Errorf("%d rego tests failed", failed)
	}
	if len(report.Results) == 0 {
		return fmt.Errorf("%s: %w", b.Origin, policy.ErrUntested)
	}
	return nil
}
