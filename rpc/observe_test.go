package rpc_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
)

// fakeTokens verifies the bearer token "good.token.alice" as alice; any
// other token is refused as expired.
type fakeTokens struct{}

const goodToken = "good.token.alice"

func (fakeTokens) Verify(_ context.Context, raw string, _ security.Workload) (*security.User, error) {
	if raw != goodToken {
		return nil, &token.Error{Reason: token.ReasonExpired, Detail: "token has expired"}
	}
	return &security.User{Subject: "alice", Roles: []string{"customer"}, CertBound: true}, nil
}

// post sends a Connect unary call as JSON, the way curl does, and returns
// the response and its body.
func post(t *testing.T, hc *http.Client, url, body string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(data)
}

// accessLines returns the access-log lines of the request with id.
func accessLines(logs *rpctest.Logs, id string) []string {
	var out []string
	for _, l := range logs.Lines() {
		if strings.Contains(l, "msg=rpc ") && strings.HasSuffix(l, " request_id="+id) {
			out = append(out, l)
		}
	}
	return out
}

var generatedID = regexp.MustCompile(`^[0-9a-f]{16}-[0-9]+$`)

// TestRequestIDs: a well-formed X-Request-Id is kept, anything else is
// replaced by a generated id; either way the id comes back in the response
// and is on the call's access-log and decision-log lines.
func TestRequestIDs(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	hc := f.httpClient(t)
	cases := map[string]struct {
		sent string
		kept bool
	}{
		"well-formed":          {sent: "req-2026.11_21-ABC", kept: true},
		"64 characters":        {sent: strings.Repeat("a", 64), kept: true},
		"absent":               {sent: ""},
		"65 characters":        {sent: strings.Repeat("a", 65)},
		"space":                {sent: "a b"},
		"quote":                {sent: `a"b`},
		"non-ASCII":            {sent: "ré"},
		"log-injection-shaped": {sent: "x msg=forged"},
		"slash":                {sent: "a/b"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			if c.sent != "" {
				h.Set(rpc.RequestIDHeader, c.sent)
			}
			res, body := post(t, hc, f.srv.URL+userv1connect.UserServiceGetUserProcedure, `{"id":"alice"}`, h)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", res.StatusCode, body)
			}
			id := res.Header.Get(rpc.RequestIDHeader)
			switch {
			case c.kept && id != c.sent:
				t.Fatalf("response id %q, want the client's %q", id, c.sent)
			case !c.kept && !generatedID.MatchString(id):
				t.Fatalf("response id %q for %q, want a generated one", id, c.sent)
			}
			if !rpc.ValidRequestID(id) {
				t.Fatalf("returned id %q is not valid", id)
			}
			f.srv.WaitForLog(t, "msg=decision", "request_id="+id)
			if lines := accessLines(f.srv.Logs, id); len(lines) != 1 || !strings.Contains(lines[0], "code=ok") {
				t.Fatalf("access-log lines for %s: %q", id, lines)
			}
		})
	}
}

// TestGeneratedRequestIDsAreUnique: ids the server makes do not repeat.
func TestGeneratedRequestIDsAreUnique(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	hc := f.httpClient(t)
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		res, _ := post(t, hc, f.srv.URL+userv1connect.UserServiceGetUserProcedure, `{"id":"alice"}`, nil)
		id := res.Header.Get(rpc.RequestIDHeader)
		if seen[id] {
			t.Fatalf("id %q generated twice", id)
		}
		seen[id] = true
	}
}

// TestAccessLogOneLinePerCall: every request — allowed, denied by the
// policy, refused by authentication before any RPC code runs, invalid,
// unknown, streaming — gets exactly one access-log line with its code.
func TestAccessLogOneLinePerCall(t *testing.T) {
	t.Parallel()
	authz := allowAnyWorkload(t, userv1connect.UserServiceGetUserProcedure, userv1connect.UserServiceListUsersProcedure, userv1connect.UserServiceWatchUserChangesProcedure)
	f := newFixture(t, authz, rpc.WithTokenVerifier(fakeTokens{}))
	hc := f.httpClient(t)
	watch := func(id string, after int64) error {
		client := f.userClient(t)
		ctx, cancel := context.WithTimeout(rpc.WithRequestID(context.Background(), id), 10*time.Second)
		defer cancel()
		stream, err := client.WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{AfterSequence: after})
		if err != nil {
			return err
		}
		defer stream.Close()
		for stream.Receive() {
		}
		return stream.Err()
	}
	calls := map[string]struct {
		call func(id string) error
		code connect.Code
		peer string
	}{
		"ok": {code: 0, call: func(id string) error {
			_, err := f.userClient(t).GetUser(rpc.WithRequestID(context.Background(), id), &userv1.GetUserRequest{Id: "alice"})
			return err
		}},
		"denied": {code: connect.CodePermissionDenied, call: func(id string) error {
			_, err := f.userClient(t).CreateUser(rpc.WithRequestID(context.Background(), id), &userv1.CreateUserRequest{})
			return err
		}},
		// The handler's code, which an HTTP status alone would not tell.
		"unimplemented": {code: connect.CodeUnimplemented, call: func(id string) error {
			_, err := f.userClient(t).ListUsers(rpc.WithRequestID(context.Background(), id), &userv1.ListUsersRequest{})
			return err
		}},
		"invalid": {code: connect.CodeInvalidArgument, call: func(id string) error {
			_, err := f.userClient(t).GetUser(rpc.WithRequestID(context.Background(), id), &userv1.GetUserRequest{})
			return err
		}},
		"refused token": {code: connect.CodeUnauthenticated, call: func(id string) error {
			res, _ := post(t, hc, f.srv.URL+userv1connect.UserServiceGetUserProcedure, `{"id":"alice"}`,
				http.Header{rpc.RequestIDHeader: {id}, "Authorization": {"Bearer expired.token.x"}})
			return connect.NewError(connect.CodeUnauthenticated, errors.New(res.Status))
		}},
		"unknown procedure": {code: connect.CodeUnimplemented, call: func(id string) error {
			res, _ := post(t, hc, f.srv.URL+"/user.v1.UserService/Nope", `{}`, http.Header{rpc.RequestIDHeader: {id}})
			return errors.New(res.Status)
		}},
		"undecodable message": {code: connect.CodeInvalidArgument, call: func(id string) error {
			res, _ := post(t, hc, f.srv.URL+userv1connect.UserServiceGetUserProcedure, `{"id":`, http.Header{rpc.RequestIDHeader: {id}})
			return errors.New(res.Status)
		}},
		"stream":                 {code: connect.CodeUnimplemented, call: func(id string) error { return watch(id, 1) }},
		"invalid stream message": {code: connect.CodeInvalidArgument, call: func(id string) error { return watch(id, -1) }},
	}
	for name, c := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			id := "access-" + strings.ReplaceAll(name, " ", "-")
			if err := c.call(id); c.code != 0 && err == nil || c.code == 0 && err != nil {
				t.Fatalf("call: %v", err)
			}
			line := f.srv.WaitForLog(t, "msg=rpc ", "request_id="+id)
			want := "code=ok"
			if c.code != 0 {
				want = "code=" + c.code.String()
			}
			if !strings.Contains(line, want) || !strings.Contains(line, "peer="+clientID) {
				t.Fatalf("access line %q, want %s and the peer", line, want)
			}
			// The access line is the last thing the server writes for a
			// request, so any other line for it is already there.
			if lines := accessLines(f.srv.Logs, id); len(lines) != 1 {
				t.Fatalf("%d access-log lines, want 1: %q", len(lines), lines)
			}
		})
	}
}

// httpClient is an HTTP/2 client with the cli certificate, for requests
// made by hand.
func (f *fixture) httpClient(t *testing.T) *http.Client {
	t.Helper()
	hc, err := rpc.NewHTTPClient(f.ca.Source(f.client))
	if err != nil {
		t.Fatal(err)
	}
	return hc
}

// userClient is a client with the cli certificate made by rpc.NewClient,
// which sends the request id in ctx as X-Request-Id.
func (f *fixture) userClient(t *testing.T, opts ...rpc.ClientOption) userv1connect.UserServiceClient {
	t.Helper()
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(f.client), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
