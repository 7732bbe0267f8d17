package authz_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// TestDecisionHookSeesEveryDecision: a hook is told of each decision with
// the id the denied caller sees, the answer, and an evaluation error.
func TestDecisionHookSeesEveryDecision(t *testing.T) {
	t.Parallel()
	id, err := spiffeid.Parse("spiffe://palisade.local/client/cli")
	if err != nil {
		t.Fatal(err)
	}
	ctx := security.NewContext(context.Background(), &security.Principal{Workload: security.Workload{ID: id}})
	type seen struct {
		id       string
		allow    bool
		resource bool
		err      error
	}
	var got []seen
	hook := authz.WithDecisionHook(func(_ context.Context, in *authz.Input, d authz.Decision, err error) {
		got = append(got, seen{id: in.DecisionID, allow: d.Allow, resource: in.Resource != nil, err: err})
	})
	quiet := authz.WithLogger(slog.New(slog.DiscardHandler))
	broken := errors.New("policy exploded")
	authorizer := authz.AuthorizerFunc(func(_ context.Context, in *authz.Input) (authz.Decision, error) {
		switch in.Resource.ID {
		case "mine":
			return authz.Decision{Allow: true}, nil
		case "broken":
			return authz.Decision{}, broken
		}
		return authz.Decision{Reasons: []string{"not yours"}}, nil
	})
	call := authz.NewCallContext(ctx, authorizer, "/order.v1.OrderService/GetOrder", quiet, hook)
	if err := authz.AuthorizeResource(call, authz.Resource{Kind: "order", ID: "mine"}); err != nil {
		t.Fatalf("allowed resource: %v", err)
	}
	denied := authz.AuthorizeResource(call, authz.Resource{Kind: "order", ID: "theirs"})
	failed := authz.AuthorizeResource(call, authz.Resource{Kind: "order", ID: "broken"})
	if connect.CodeOf(denied) != connect.CodePermissionDenied || connect.CodeOf(failed) != connect.CodePermissionDenied {
		t.Fatalf("denied %v, failed %v", denied, failed)
	}
	if len(got) != 3 {
		t.Fatalf("hook saw %d decisions, want 3: %+v", len(got), got)
	}
	if !got[0].allow || got[1].allow || got[2].allow || !got[0].resource {
		t.Fatalf("hook saw %+v", got)
	}
	if !errors.Is(got[2].err, broken) || got[1].err != nil {
		t.Fatalf("hook errors: %v, %v", got[1].err, got[2].err)
	}
	// The id the hook saw is the one the denied caller is told.
	if got[1].id == "" || !strings.Contains(denied.Error(), "decision "+got[1].id) || !strings.Contains(failed.Error(), "decision "+got[2].id) {
		t.Fatalf("ids %q %q not in %v / %v", got[1].id, got[2].id, denied, failed)
	}
}
