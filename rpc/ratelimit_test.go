package rpc_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
)

var listServices = &reflectionpb.ServerReflectionRequest{
	MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// subjectVerifier accepts any token and makes its text the user's subject,
// so the test can be many users with one certificate.
type subjectVerifier struct{}

func (subjectVerifier) Verify(_ context.Context, tok string, _ security.Workload) (*security.User, error) {
	return &security.User{Subject: tok}, nil
}

// TestRateLimitPerPrincipal: with 1 call/s and bursts of 3, a user's burst
// passes, the next call is resource_exhausted with Retry-After (HTTP 429 in
// the Connect protocol) and never reaches the handler, other users and the
// bare workload are unaffected, a stream takes one token when it opens,
// and a second later the user has one call again.
func TestRateLimitPerPrincipal(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	users := &testusers.Service{}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), allowAll(t), users.Mount,
		rpc.WithTokenVerifier(subjectVerifier{}),
		rpc.WithRateLimit(1, 3), rpc.WithRateLimitClock(clock.Now))
	cli := ca.Client("/client/cli")
	ctx := context.Background()

	clientFor := func(tok string, opts ...rpc.ClientOption) userv1connect.UserServiceClient {
		t.Helper()
		if tok != "" {
			opts = append(opts, rpc.WithTokenSource(func(context.Context) (string, error) { return tok, nil }))
		}
		c, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(cli), opts...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	getUser := func(c userv1connect.UserServiceClient) error {
		_, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: "x"})
		return err
	}
	wantLimited := func(err error, retryAfter string) {
		t.Helper()
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
			t.Fatalf("got %v, want resource_exhausted", err)
		}
		if got := ce.Meta().Get("Retry-After"); got != retryAfter {
			t.Fatalf("Retry-After %q, want %q", got, retryAfter)
		}
		if want := "rate limit exceeded: retry after " + retryAfter + " s"; ce.Message() != want {
			t.Fatalf("message %q, want %q", ce.Message(), want)
		}
	}

	alice := clientFor("alice")
	for i := range 3 {
		if err := getUser(alice); err != nil {
			t.Fatalf("call %d of the burst: %v", i+1, err)
		}
	}
	wantLimited(getUser(alice), "1")
	// The same user over gRPC shares the bucket.
	wantLimited(getUser(clientFor("alice", rpc.WithProtocol(rpc.ProtocolGRPC))), "1")
	if n := users.Calls(); n != 3 {
		t.Fatalf("%d calls reached the handler, want the burst of 3", n)
	}

	// Over HTTP/1.1 as curl would see it: 429 and a Retry-After header.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(cli)}, NextProtos: []string{"http/1.1"},
	}}}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+userv1connect.UserServiceGetUserProcedure, strings.NewReader(`{"id":"x"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") != "1" || !strings.Contains(string(body), "resource_exhausted") {
		t.Fatalf("HTTP/1.1: status %d, Retry-After %q, body %s", res.StatusCode, res.Header.Get("Retry-After"), body)
	}

	// Other principals have their own buckets: another user on the same
	// certificate, and the workload itself without a token.
	bob := clientFor("bob")
	if err := getUser(bob); err != nil {
		t.Fatalf("bob: %v", err)
	}
	workload := clientFor("")
	if err := getUser(workload); err != nil {
		t.Fatalf("workload without token: %v", err)
	}

	// A stream takes one token when it opens, however many messages follow.
	hcl, err := rpc.NewHTTPClient(ca.Source(cli))
	if err != nil {
		t.Fatal(err)
	}
	reflection := connect.NewClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse](hcl, srv.URL+rpc.ReflectionV1Procedure)
	openStream := func() error {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		stream := reflection.CallBidiStream(sctx)
		defer stream.CloseResponse()
		for range 3 {
			if err := stream.Send(listServices); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if _, err := stream.Receive(); err != nil {
				return err
			}
		}
		return stream.CloseRequest()
	}
	// The workload has used 1 of 3: two streams open, the third is refused.
	for i := range 2 {
		if err := openStream(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	wantLimited(openStream(), "1")

	// Refill: one token per second.
	clock.Advance(500 * time.Millisecond)
	wantLimited(getUser(alice), "1") // half a token: still a wait, rounded up
	clock.Advance(500 * time.Millisecond)
	if err := getUser(alice); err != nil {
		t.Fatalf("after a second: %v", err)
	}
	wantLimited(getUser(alice), "1")
	clock.Advance(time.Hour)
	for i := range 3 { // a full burst again, never more
		if err := getUser(alice); err != nil {
			t.Fatalf("after an hour, call %d: %v", i+1, err)
		}
	}
	wantLimited(getUser(alice), "1")
	srv.WaitForLog(t, "rpc", "procedure="+userv1connect.UserServiceGetUserProcedure, "code=resource_exhausted")
}

// TestRateLimitRetryAfterRoundsUp: at one call per 10 s, the wait after the
// burst is 10 s.
func TestRateLimitRetryAfterRoundsUp(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), allowAll(t), (&testusers.Service{}).Mount,
		rpc.WithRateLimit(0.1, 0), rpc.WithRateLimitClock(clock.Now))
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "x"}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2500 * time.Millisecond)
	_, err = client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "x"})
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted || ce.Meta().Get("Retry-After") != "8" {
		t.Fatalf("got %v (meta %v), want resource_exhausted with Retry-After 8", err, ce.Meta())
	}
}
