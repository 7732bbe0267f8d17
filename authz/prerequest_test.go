package authz_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// recording is an authorizer that records what it was asked, and answers
// with decide.
type recording struct {
	early  bool
	decide func(in *authz.Input) authz.Decision
	mu     sync.Mutex
	asked  []authz.Input
}

func (r *recording) Decide(_ context.Context, in *authz.Input) (authz.Decision, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp := *in
	r.asked = append(r.asked, cp)
	return r.decide(in), nil
}

func (r *recording) inputs() []authz.Input {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]authz.Input(nil), r.asked...)
}

// preRequest is a recording that implements authz.PreRequestAuthorizer.
type preRequest struct{ *recording }

func (p preRequest) DecidesBeforeRequest() bool { return p.early }

// TestDecideBeforeRequest: a server asks a PreRequestAuthorizer about a
// unary call before reading its request, over real TLS. An answer that
// ignores the request is final: the call is decided once — a denial
// reaches the caller with its decision id without the handler running, an
// allow lets the call through without a second evaluation — and logged
// once. An answer that needs the request is asked again with it, under the
// same decision id, and only that one is logged. An authorizer that does
// not implement the interface, or says it does not decide early, is asked
// once, with the request.
func TestDecideBeforeRequest(t *testing.T) {
	t.Parallel()
	allowIf := func(ignores bool, allow func(*authz.Input) bool) func(*authz.Input) authz.Decision {
		return func(in *authz.Input) authz.Decision {
			d := authz.Decision{Allow: allow(in), IgnoresRequest: ignores && in.Request == nil}
			if !d.Allow {
				d.Reasons = []string{"no"}
			}
			return d
		}
	}
	always := func(*authz.Input) bool { return true }
	never := func(*authz.Input) bool { return false }
	ownID := func(in *authz.Input) bool {
		req, ok := in.Request.(*userv1.GetUserRequest)
		return ok && req.GetId() == "x"
	}
	cases := []struct {
		name       string
		authorizer func() (authz.Authorizer, *recording)
		code       connect.Code
		asked      int  // times Decide was asked
		early      bool // the first time, before the request
		handlerOK  bool
	}{
		{"final allow", func() (authz.Authorizer, *recording) {
			r := &recording{early: true, decide: allowIf(true, always)}
			return preRequest{r}, r
		}, 0, 1, true, true},
		{"final deny", func() (authz.Authorizer, *recording) {
			r := &recording{early: true, decide: allowIf(true, never)}
			return preRequest{r}, r
		}, connect.CodePermissionDenied, 1, true, false},
		{"request needed, allowed", func() (authz.Authorizer, *recording) {
			r := &recording{early: true, decide: allowIf(false, ownID)}
			return preRequest{r}, r
		}, 0, 2, true, true},
		{"request needed, denied", func() (authz.Authorizer, *recording) {
			r := &recording{early: true, decide: allowIf(false, never)}
			return preRequest{r}, r
		}, connect.CodePermissionDenied, 2, true, false},
		{"does not decide early", func() (authz.Authorizer, *recording) {
			r := &recording{early: false, decide: allowIf(true, always)}
			return preRequest{r}, r
		}, 0, 1, false, true},
		{"a plain Authorizer", func() (authz.Authorizer, *recording) {
			r := &recording{decide: allowIf(true, always)}
			return authz.AuthorizerFunc(r.Decide), r
		}, 0, 1, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			authorizer, rec := c.authorizer()
			ca := certstest.NewCA(t)
			users := &testusers.Service{}
			srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authorizer, users.Mount)
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
			if err != nil {
				t.Fatal(err)
			}
			_, err = client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "x"})
			if connect.CodeOf(err) != c.code && !(c.code == 0 && err == nil) {
				t.Fatalf("GetUser: %v, want code %v", err, c.code)
			}
			asked := rec.inputs()
			if len(asked) != c.asked {
				t.Fatalf("asked %d times, want %d: %+v", len(asked), c.asked, asked)
			}
			if early := asked[0].Request == nil; early != c.early {
				t.Fatalf("first asked with request %v", asked[0].Request)
			}
			if last := asked[len(asked)-1]; c.asked == 2 && (last.Request == nil || last.DecisionID != asked[0].DecisionID) {
				t.Fatalf("asked again with %+v, want the request and decision id %s", last, asked[0].DecisionID)
			}
			id := asked[0].DecisionID
			if c.code != 0 && !strings.Contains(err.Error(), "decision "+id) {
				t.Fatalf("denial %v does not name decision %s", err, id)
			}
			srv.WaitForLog(t, "msg=decision", "decision_id="+id+" ")
			if n := srv.Count("msg=decision "); n != 1 {
				t.Fatalf("%d decision lines, want 1", n)
			}
			if got := users.Calls() == 1; got != c.handlerOK {
				t.Fatalf("handler ran: %v, want %v", got, c.handlerOK)
			}
			if asked[0].StreamType != "unary" || asked[0].Protocol != connect.ProtocolConnect || asked[0].HTTPMethod != "POST" {
				t.Fatalf("first input %+v", asked[0])
			}
		})
	}
}
