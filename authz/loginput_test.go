package authz_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// lines is an io.Writer keeping what a JSON logger wrote.
type lines struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// login is an AuthService whose Login always succeeds.
type login struct {
	userv1connect.UnimplementedAuthServiceHandler
}

func (login) Login(context.Context, *userv1.LoginRequest) (*userv1.LoginResponse, error) {
	return &userv1.LoginResponse{AccessToken: "t", TokenType: "Bearer"}, nil
}

// TestDecisionLogInput: with WithDecisionLogInput, a decision log line
// carries the input the authorizer decided on, over real TLS — the request
// with the password marked debug_redact left out and the masked paths
// erased, both listed — and never the password; without it, no input.
func TestDecisionLogInput(t *testing.T) {
	t.Parallel()
	const password = "hunter2-but-longer"
	mask, err := authz.NewInputMask("/input/request/username")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		opts   []authz.InterceptorOption
		erased []string // nil: no input logged
	}{
		{"off", nil, nil},
		{"sensitive only", []authz.InterceptorOption{authz.WithDecisionLogInput(nil)}, []string{"/input/request/password"}},
		{"masked", []authz.InterceptorOption{authz.WithDecisionLogInput(mask)}, []string{"/input/request/username", "/input/request/password"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ca := certstest.NewCA(t)
			var asked authz.Input
			var mu sync.Mutex
			allow := authz.AuthorizerFunc(func(_ context.Context, in *authz.Input) (authz.Decision, error) {
				mu.Lock()
				asked = *in
				mu.Unlock()
				return authz.Decision{Allow: true, Revision: "r1"}, nil
			})
			out := &lines{}
			logger := slog.New(slog.NewJSONHandler(out, nil))
			srv, err := rpc.NewServer(ca.Source(ca.Server("/svc/user")), allow, rpc.WithLogger(logger), rpc.WithAuthorizationOptions(c.opts...))
			if err != nil {
				t.Fatal(err)
			}
			if err := rpc.Mount(srv, userv1connect.NewAuthServiceHandler, userv1connect.AuthServiceHandler(login{})); err != nil {
				t.Fatal(err)
			}
			running := rpctest.Serve(t, srv, nil)
			client, err := rpc.NewClient(userv1connect.NewAuthServiceClient, running.URL, ca.Source(ca.Client("/client/cli")), rpc.WithProtocol(rpc.ProtocolGRPC))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.Login(context.Background(), &userv1.LoginRequest{Username: "alice", Password: password}); err != nil {
				t.Fatal(err)
			}
			if err := running.Stop(); err != nil {
				t.Fatal(err)
			}
			var line map[string]json.RawMessage
			for l := range strings.Lines(out.String()) {
				if strings.Contains(l, `"msg":"decision"`) {
					if err := json.Unmarshal([]byte(l), &line); err != nil {
						t.Fatalf("%v: %s", err, l)
					}
				}
			}
			if line == nil {
				t.Fatalf("no decision line in\n%s", out)
			}
			if strings.Contains(out.String(), password) {
				t.Fatalf("the password reached the log:\n%s", out)
			}
			if c.erased == nil {
				if line["input"] != nil || line["erased"] != nil {
					t.Fatalf("input logged without WithDecisionLogInput: %s", out)
				}
				return
			}
			var erased []string
			if err := json.Unmarshal(line["erased"], &erased); err != nil || !slices.Equal(erased, c.erased) {
				t.Errorf("erased %s, want %v", line["erased"], c.erased)
			}
			mu.Lock()
			in := asked
			mu.Unlock()
			if got, want := logged(t, line["input"]), policyDocument(t, &in, erased); got.Compare(want) != 0 {
				t.Errorf("logged input\n %s\nis not what the authorizer saw, less %v:\n %s", got, erased, want)
			}
			var doc struct {
				Request map[string]any `json:"request"`
				Peer    struct {
					SPIFFEID string `json:"spiffe_id"`
				} `json:"peer"`
			}
			if err := json.Unmarshal(line["input"], &doc); err != nil {
				t.Fatal(err)
			}
			if doc.Peer.SPIFFEID != "spiffe://palisade.local/client/cli" || (doc.Request["username"] == "alice") == slices.Contains(c.erased, "/input/request/username") {
				t.Errorf("logged input %s", line["input"])
			}
		})
	}
}
