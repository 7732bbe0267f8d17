package policy

import (
	"embed"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"reflect"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The base policy: base.rego and lib.rego decide, testing_test.rego holds
// the helpers of the layers' tests, base_test.rego is the base's own tests.
//
//go:embed rego/*.rego
var baseFiles embed.FS

// baseDir is the directory under which the base's files are named in a
// merged bundle (and in errors and Explain's output).
const baseDir = "palisade"

// baseTests is the base's own test file, left out of Base: it runs in the
// policy package's Go tests, not each time a layer is loaded.
const baseTests = "base_test.rego"

// Base returns the framework's base policy: package palisade.authz with the
// decision document, default deny, health and reflection for the workloads
// of the trust domain, the token exchange for the delegates and the
// need_user convention; package palisade.lib, the helpers the layers use;
// and package palisade.testing, helpers for the layers' tests (in a test
// file, so never compiled into a decision). Its files are named
// palisade/<file>. An Engine always runs it under the service's layer,
// unless made WithoutBase.
func Base() *Bundle {
	b, err := readBase(false)
	if err != nil {
		panic(err) // the embedded files are fixed at build time; the tests read them
	}
	return b
}

// readBase reads the embedded base, with its own tests if withTests.
func readBase(withTests bool) (*Bundle, error) {
	b := &Bundle{Modules: map[string]string{}, Origin: "palisade base"}
	files, err := fs.Glob(baseFiles, "rego/*.rego")
	if err != nil {
		return nil, fmt.Errorf("policy: base: %w", err)
	}
	for _, f := range files {
		name := path.Base(f)
		if name == baseTests && !withTests {
			continue
		}
		src, err := baseFiles.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("policy: base: %w", err)
		}
		b.Modules[path.Join(baseDir, name)] = string(src)
	}
	return b, nil
}

// Merge combines bundles, the base and a service's layer, say, into one:
// every module of each, and their data merged key by key. Two modules of the
// same file name, and two data documents that give one key different values
// (other than two objects, which are merged), are errors. The result's
// Origin names them all, joined by " + ".
func Merge(layers ...*Bundle) (*Bundle, error) {
	out := &Bundle{Modules: map[string]string{}}
	from := map[string]string{} // module name -> origin, for errors
	var origins []string
	for _, b := range layers {
		if b == nil {
			continue
		}
		for name, src := range b.Modules {
			if prev, dup := from[name]; dup {
				return nil, fmt.Errorf("policy: merge: %s is in both %s and %s", name, prev, b.Origin)
			}
			from[name] = b.Origin
			out.Modules[name] = src
		}
		if b.Data != nil {
			if out.Data == nil {
				out.Data = map[string]any{}
			}
			if err := mergeData(out.Data, b.Data, "data"); err != nil {
				return nil, fmt.Errorf("policy: merge %s: %w", b.Origin, err)
			}
		}
		if b.Origin != "" {
			origins = append(origins, b.Origin)
		}
	}
	out.Origin = strings.Join(origins, " + ")
	return out, nil
}

// mergeData merges src into dst (at the path at, for errors). Values are
// copied as far as objects go; arrays and scalars are shared, as they are
// only read.
func mergeData(dst, src map[string]any, at string) error {
	keys := make([]string, 0, len(src))
	for k := range src {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := src[k]
		old, present := dst[k]
		if !present {
			if obj, ok := v.(map[string]any); ok {
				v = deepCopy(obj)
			}
			dst[k] = v
			continue
		}
		oldObj, ok1 := old.(map[string]any)
		newObj, ok2 := v.(map[string]any)
		switch {
		case ok1 && ok2:
			if err := mergeData(oldObj, newObj, at+"."+k); err != nil {
				return err
			}
		case !reflect.DeepEqual(old, v):
			return fmt.Errorf("data conflict at %s.%s", at, k)
		}
	}
	return nil
}

// overlay lays src over dst: objects are merged key by key, any other
// value of src replaces dst's.
func overlay(dst, src map[string]any) {
	for k, v := range src {
		newObj, ok1 := v.(map[string]any)
		oldObj, ok2 := dst[k].(map[string]any)
		switch {
		case ok1 && ok2:
			overlay(oldObj, newObj)
		case ok1:
			dst[k] = deepCopy(newObj)
		default:
			dst[k] = v
		}
	}
}

func deepCopy(m map[string]any) map[string]any {
	out := maps.Clone(m)
	for k, v := range out {
		if obj, ok := v.(map[string]any); ok {
			out[k] = deepCopy(obj)
		}
	}
	return out
}

// reserved are the rules of package palisade.authz that are the base's
// alone: the decision and what it is made of. (allow is the layers' too;
// its default is the base's, which OPA itself keeps from being redefined.)
var reserved = map[string]bool{
	"decision":        true,
	"reasons":         true,
	"need_user":       true,
	"need_user_field": true,
	"request_needed":  true,
	"user_procedure":  true,
}

// basePackages are the packages of the base that a layer may not add to.
var basePackages = []ast.Ref{
	ast.MustParseRef("data.palisade.lib"),
	ast.MustParseRef("data.palisade.testing"),
}

var authzPackage = ast.MustParseRef("data.palisade.authz")

// checkLayer refuses a layer's module that would change the base rather
// than add to it: a rule of palisade.authz named in reserved (or under one
// of them), a default for allow, or any rule in a package of the base.
func checkLayer(mods map[string]*ast.Module, layer map[string]bool) error {
	names := make([]string, 0, len(layer))
	for name := range layer {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m := mods[name]
		pkg := m.Package.Path
		for _, p := range basePackages {
			if pkg.HasPrefix(p) {
				return fmt.Errorf("policy: %s: package %s belongs to the base policy; a layer may not add to it", name, strings.TrimPrefix(pkg.String(), "data."))
			}
		}
		for _, r := range m.Rules {
			full := pkg.Concat(r.Head.Ref())
			if !full.HasPrefix(authzPackage) || len(full) <= len(authzPackage) {
				continue
			}
			var first string
			switch v := full[len(authzPackage)].Value.(type) {
			case ast.String: // from the package path
				first = string(v)
			case ast.Var: // the rule's name
				first = string(v)
			default:
				continue
			}
			if reserved[first] {
				return fmt.Errorf("policy: %s:%d: %s is the base policy's; a layer adds allow rules, deny_reasons, user_procedures and request_free rules", name, r.Location.Row, first)
			}
			if r.Default && first == "allow" {
				return fmt.Errorf("policy: %s:%d: the default of allow is the base policy's (false); a layer adds allow rules", name, r.Location.Row)
			}
		}
	}
	return nil
}
