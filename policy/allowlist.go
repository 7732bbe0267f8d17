package policy

import (
	"context"
	"fmt"
	"sort"

	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// AnyWorkload in an AllowList entry admits every workload of the server's
// trust domain (the server has already refused any other).
const AnyWorkload = "*"

// AllowList is a static Authorizer: for each procedure, the SPIFFE IDs of the
// workloads that may call it. A procedure it does not name is denied. It is
// the placeholder that the OPA engine replaces; it knows nothing of users.
type AllowList struct {
	rules map[string]map[string]bool
}

// NewAllowList builds an AllowList from procedure → SPIFFE IDs (or AnyWorkload).
// Every ID must be a valid SPIFFE ID.
func NewAllowList(rules map[string][]string) (*AllowList, error) {
	a := &AllowList{rules: make(map[string]map[string]bool, len(rules))}
	for proc, ids := range rules {
		set := make(map[string]bool, len(ids))
		for _, id := range ids {
			if id != AnyWorkload {
				if _, err := spiffeid.Parse(id); err != nil {
					return nil, fmt.Errorf("policy: allow-list entry for %s: %w", proc, err)
				}
			}
			set[id] = true
		}
		a.rules[proc] = set
	}
	return a, nil
}

// Decide implements Authorizer.
func (a *AllowList) Decide(_ context.Context, in *Input) (Decision, error) {
	d := Decision{ID: in.DecisionID}
	set, ok := a.rules[in.Procedure]
	if !ok {
		d.Reasons = []string{"procedure is not on the allow-list"}
		return d, nil
	}
	if set[AnyWorkload] || set[in.Principal.Workload.ID.String()] {
		d.Allow = true
		return d, nil
	}
	d.Reasons = []string{fmt.Sprintf("workload %s may not call %s", in.Principal.Workload.ID, in.Procedure)}
	return d, nil
}

// Procedures returns the procedures the list names, sorted.
func (a *AllowList) Procedures() []string {
	out := make([]string, 0, len(a.rules))
	for p := range a.rules {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
