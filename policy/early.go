package policy

import "github.com/open-policy-agent/opa/v1/ast"

// requestNeededKey is the field of the decision document by which a policy
// says whether the request could change a decision.
const requestNeededKey = "request_needed"

// DecidesBeforeRequest implements authz.PreRequestAuthorizer: true when the
// policy in force mentions request_needed, so that a decision asked for
// before the request is read may be final. A policy that never does would
// only answer "the request is needed", and its calls are not evaluated
// twice for nothing.
func (e *Engine) DecidesBeforeRequest() bool { return e.cur.Load().early }

// mentionsRequestNeeded reports whether a policy module (not a test) holds
// the string "request_needed" anywhere: as an object key of its decision,
// or anything else. A policy that builds the key some other way is taken
// not to set it, which only costs it the early decisions.
func mentionsRequestNeeded(mods map[string]*ast.Module) bool {
	found := false
	for name, m := range mods {
		if IsTestFile(name) {
			continue
		}
		ast.WalkTerms(m, func(t *ast.Term) bool {
			if s, ok := t.Value.(ast.String); ok && string(s) == requestNeededKey {
				found = true
			}
			return found
		})
		if found {
			return true
		}
	}
	return false
}
