package authz

import (
	"context"
	"fmt"

	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// AnyWorkload in a Rule admits every workload of the server's trust domain
// (the server has already refused any other).
const AnyWorkload = "*"

// Rule says who may call one procedure.
type Rule struct {
	// Workloads are the SPIFFE IDs of the workloads that may call, or AnyWorkload.
	Workloads []string
	// NeedsUser requires a verified user token with the call.
	NeedsUser bool
}

// AllowList is a static Authorizer: for each procedure, a Rule. A procedure
// it does not name is denied. It knows workloads and whether a user is
// present, nothing of roles or resources (a resource-level decision is
// decided by the procedure's rule alone); the sample services use the OPA
// Engine, tests and small deployments this.
type AllowList struct {
	rules map[string]allowRule
}

type allowRule struct {
	workloads map[string]bool
	needsUser bool
}

// NewAllowList builds an AllowList from procedure → Rule. Every workload must
// be a valid SPIFFE ID or AnyWorkload.
func NewAllowList(rules map[string]Rule) (*AllowList, error) {
	a := &AllowList{rules: make(map[string]allowRule, len(rules))}
	for proc, r := range rules {
		set := make(map[string]bool, len(r.Workloads))
		for _, id := range r.Workloads {
			if id != AnyWorkload {
				if _, err := spiffeid.Parse(id); err != nil {
					return nil, fmt.Errorf("authz: allow-list entry for %s: %w", proc, err)
				}
			}
			set[id] = true
		}
		a.rules[proc] = allowRule{workloads: set, needsUser: r.NeedsUser}
	}
	return a, nil
}

// Decide implements Authorizer. An AllowList never reads the request, so
// every decision it takes ignores it.
func (a *AllowList) Decide(_ context.Context, in *Input) (Decision, error) {
	d := Decision{IgnoresRequest: true}
	r, ok := a.rules[in.Procedure]
	switch {
	case !ok:
		d.Reasons = []string{"procedure is not on the allow-list"}
	case !r.workloads[AnyWorkload] && !r.workloads[in.Principal.Workload.ID.String()]:
		d.Reasons = []string{fmt.Sprintf("workload %s may not call %s", in.Principal.Workload.ID, in.Procedure)}
	case r.needsUser && in.Principal.User == nil:
		d.Reasons = []string{in.Procedure + " needs a user token"}
		d.NeedsUser = true
	default:
		d.Allow = true
	}
	return d, nil
}

// DecidesBeforeRequest implements PreRequestAuthorizer: an AllowList
// decides every unary call before its request is read.
func (a *AllowList) DecidesBeforeRequest() bool { return true }
