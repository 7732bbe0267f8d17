package palisade_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/palisade-rpc/palisade"

// layer is a row of the package table of DESIGN14 ("may import"): the
// packages of this module a package may import directly, and whether it
// may depend, at any depth, on Open Policy Agent and on grpc-go.
type layer struct {
	imports []string // of this module, relative to its root; "x/..." admits x's subpackages
	opa     bool
	// grpc admits google.golang.org/grpc (8.7 MB of a server binary): only
	// the Workload API client needs it, and what tests a gRPC client.
	grpc bool
}

// layers holds a row for every package of the framework. A package of the
// module that has no row and is not the samples', a binary's, the
// conformance harness's or generated code fails TestLayering: add its row
// here, so that the table stays the whole story. (A directory of tests
// alone is no package anything imports, and needs no row.)
var layers = map[string]layer{
	"internal/poll":              {},
	"internal/pemfile":           {},
	"security/spiffeid":          {},
	"security/password":          {},
	"security/throttle":          {},
	"security":                   {imports: []string{"security/spiffeid"}},
	"security/mtls":              {imports: []string{"security/spiffeid", "internal/pemfile", "internal/poll"}},
	"security/mtls/workloadapi":  {imports: []string{"security/mtls", "security/spiffeid"}, grpc: true},
	"security/token":             {imports: []string{"security", "security/spiffeid", "internal/pemfile", "internal/poll", "proto/palisade/..."}},
	"authz":                      {imports: []string{"security", "security/spiffeid"}},
	"authz/decisionlog":          {imports: []string{"authz", "rpc", "security/mtls"}},
	"policy":                     {imports: []string{"authz", "security", "security/spiffeid", "internal/poll", "policy/internal/protovalue"}, opa: true},
	"policy/internal/protovalue": {opa: true},                                                                                                                                                        // OPA's ast only: its fuzz target builds little
	"rpc":                        {imports: []string{"authz", "security", "security/spiffeid", "security/mtls", "security/token", "security/throttle", "proto/palisade/...", "rpc/internal/header"}}, // proto/palisade: WithDelegation calls the TokenService
	"rpc/internal/header":        {},
	"rpc/rpctest":                {imports: []string{"rpc", "authz", "security/mtls"}, grpc: true},
	// The OTLP trace exporter (--otlp-endpoint) is otlptracegrpc: telemetry,
	// and so every server with telemetry, links grpc-go.
	"telemetry":          {imports: []string{"rpc", "security/mtls", "security/spiffeid"}, grpc: true},
	"certs":              {imports: []string{"security/spiffeid", "internal/pemfile"}},
	"certs/certstest":    {imports: []string{"certs", "internal/pemfile", "security/mtls", "security/spiffeid"}},
	"internal/fakeagent": {imports: []string{"certs"}, grpc: true},
	"kit":                {imports: []string{"authz", "authz/decisionlog", "policy", "rpc", "security", "security/mtls", "security/mtls/workloadapi", "security/spiffeid", "security/token", "telemetry"}, opa: true, grpc: true},
	"internal/testusers": {imports: []string{"rpc", "security", "proto/user/v1", "proto/user/v1/userv1connect"}},
}

// unlayered are the trees of the module outside the table: they may import
// anything.
var unlayered = []string{"cmd", "services", "conformance", "proto"}

// TestLayering checks the package table: no package imports one of ours it
// may not (security/* never imports certs, rpc, policy or authz; authz and
// rpc never import policy), only policy links OPA — a server that
// authorizes with an authz.AllowList does not — and only the Workload API
// source links grpc-go, so a server with certificate files does not. It reads the import graph
// with go list, so it follows the code as it is.
func TestLayering(t *testing.T) {
	t.Parallel()
	pkgs := goList(t)
	seen := map[string]bool{}
	for _, p := range pkgs {
		rel, ours := strings.CutPrefix(p.path, module+"/")
		if !ours || !p.importable || slices.ContainsFunc(unlayered, func(tree string) bool { return admits([]string{tree + "/..."}, rel) }) {
			continue
		}
		l, ok := layers[rel]
		if !ok {
			t.Errorf("%s has no row in the layering table (layering_test.go): say what it may import", rel)
			continue
		}
		seen[rel] = true
		for _, imp := range p.imports {
			dep, ours := strings.CutPrefix(imp, module+"/")
			if ours && !admits(l.imports, dep) {
				t.Errorf("%s imports %s, which the layering table does not allow (it may import %v)", rel, dep, l.imports)
			}
		}
		if !l.opa {
			for _, dep := range p.deps {
				if strings.HasPrefix(dep, "github.com/open-policy-agent/") {
					t.Errorf("%s links OPA (%s): only policy may", rel, dep)
					break
				}
			}
		}
		if !l.grpc && slices.Contains(p.deps, "google.golang.org/grpc") {
			t.Errorf("%s links grpc-go: only the Workload API source (security/mtls/workloadapi) may", rel)
		}
	}
	for rel := range layers {
		if !seen[rel] {
			t.Errorf("the layering table has a row for %s, which go list does not find", rel)
		}
	}
}

func admits(allowed []string, dep string) bool {
	for _, a := range allowed {
		if prefix, tree := strings.CutSuffix(a, "/..."); tree {
			if dep == prefix || strings.HasPrefix(dep, prefix+"/") {
				return true
			}
		} else if dep == a {
			return true
		}
	}
	return false
}

type listed struct {
	path          string
	importable    bool // it has Go files besides tests
	imports, deps []string
}

// goList lists the module's packages with their direct imports and all
// their dependencies, test files left out.
func goList(t *testing.T) []listed {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			t.Fatalf("no go command: %v", err)
		}
	}
	out, err := exec.Command(goBin, "list", "-f", "{{.ImportPath}}\t{{len .GoFiles}}\t{{join .Imports \" \"}}\t{{join .Deps \" \"}}", "./...").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listed
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimRight(line, "\n"), "\t")
		if len(f) != 4 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		pkgs = append(pkgs, listed{path: f[0], importable: f[1] != "0", imports: strings.Fields(f[2]), deps: strings.Fields(f[3])})
	}
	if len(pkgs) < len(layers) {
		t.Fatalf("go list found %d packages, fewer than the table's %d rows", len(pkgs), len(layers))
	}
	return pkgs
}
