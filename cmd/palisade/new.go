package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/cmd/palisade/internal/scaffold"
)

func newService(args []string) error {
	fs := newFlagSet("palisade new service", `Write a new service's Go module into an empty directory, and generate its
code: a .proto with buf.validate rules and a unary and a server-streaming
method, buf configuration with the generators pinned in tools/go.mod (they
work offline once the module cache has them), the generated code, handlers
that read security.FromContext, a policy layer with its rego tests, a
main.go of 20 lines on Palisade's service kit, a Makefile (generate, test,
certs, run) and a README with the calls to try.

  palisade new service inventory --module example.com/inventory --dir ../inventory --palisade .

Palisade is not published yet: --palisade names the checkout the module
builds against (a replace directive in its go.mod).`)
	module := fs.String("module", "", "Go module `path` of the new service (required)")
	dir := fs.String("dir", "", "`directory` to write into: absent or empty (default: the service's name)")
	checkout := fs.String("palisade", "", "`path` of the Palisade checkout to build against (required until Palisade is published)")
	td := fs.String("trust-domain", certs.DefaultTrustDomain, "SPIFFE trust `domain` of the service's workload ID")
	generate := fs.Bool("generate", true, "run buf generate and go mod tidy in the new module (false: write the sources only)")
	// The name comes first (palisade new service NAME --flags), or last.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 || name == "" {
		return errors.New("want one service name: palisade new service NAME --module PATH --palisade CHECKOUT")
	}
	if *dir == "" {
		*dir = name
	}
	s := scaffold.Spec{Name: name, Module: *module, Dir: *dir, Palisade: *checkout, TrustDomain: *td}
	if err := scaffold.Write(s); err != nil {
		return err
	}
	fmt.Printf("wrote %s (module %s)\n", *dir, *module)
	if !*generate {
		return nil
	}
	if err := scaffold.Generate(*dir, os.Stdout, os.Stderr); err != nil {
		return err
	}
	fmt.Printf("generated the code; next: cd %s && make test\n", *dir)
	return nil
}
