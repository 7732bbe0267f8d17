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

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/policy"
)

func loadPolicy(dir string) (*policy.Bundle, error) {
	if dir == "" {
		return policy.DefaultBundle()
	}
	return policy.LoadDir(dir)
}

func policyEval(args []string) error {
	fs := newFlagSet("palisade policy eval", `Evaluate the authorization decision for one input document and print the
decision, its reasons and the rules that fired, for a person debugging a
denial. The input is the document the services build for every call (see
DESIGN.md, "Policy input", which shows one for each kind of caller); write
one by hand:

  {"procedure": "/user.v1.UserService/GetUser", "service": "user.v1.UserService",
   "method": "GetUser", "stream_type": "unary",
   "peer": {"spiffe_id": "spiffe://palisade.local/client/cli"},
   "token": {"sub": "alice", "roles": ["customer"], "act": null},
   "request": {"id": "bob"}, "http": {"method": "POST", "protocol": "connect"}}

The policy is the embedded default, or --policy-dir; it must compile and pass
its own tests, as it would to be loaded by a service.`)
	input := fs.String("input", "", "`file` holding the input document as JSON (\"-\" for stdin; required)")
	dir := fs.String("policy-dir", "", "`directory` of rego policies (default: the embedded ones)")
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
	value, err := ast.ValueFromReader(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("input: %w", err)
	}
	if _, ok := value.(ast.Object); !ok {
		return errors.New("input: not a JSON object")
	}
	b, err := loadPolicy(*dir)
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
	}{Allow: d.Allow, Reasons: d.Reasons, RulesFired: fired, Revision: engine.Revision(), PolicyFiles: b.Origin}
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

func policyTest(args []string) error {
	fs := newFlagSet("palisade policy test", `Run the rego tests (*_test.rego) of a policy directory — or of the embedded
default policies — through OPA's tester, and report each result and the
coverage of the policy files. Exits non-zero if a test fails.

Usage: palisade policy test [DIR]`)
	verbose := fs.Bool("v", false, "list every test, not only failures")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return errors.New("at most one directory")
	}
	b, err := loadPolicy(fs.Arg(0))
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
	return nil
}
