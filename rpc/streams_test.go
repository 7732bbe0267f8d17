package rpc_test

import (
	"context"
	"errors"
	"net/http"
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
	"github.com/palisade-rpc/palisade/security/mtls"
)

// feedUsers is testusers.Service with a WatchUserChanges that sends one
// heartbeat and then waits for its context to end, reporting the cause.
type feedUsers struct {
	*testusers.Service
	causes chan error
}

func (f *feedUsers) WatchUserChanges(ctx context.Context, _ *userv1.WatchUserChangesRequest, stream *connect.ServerStream[userv1.WatchUserChangesResponse]) error {
	if err := stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Heartbeat{Heartbeat: &userv1.WatchHeartbeat{}}}); err != nil {
		return err
	}
	<-ctx.Done()
	f.causes <- context.Cause(ctx)
	// What a careless handler might return; the client must still see why
	// the stream ended.
	return connect.NewError(connect.CodeInternal, errors.New("handler gave up"))
}

// expiringTokens accepts any token as alice's, expiring ttl after it is
// presented, and records the expiry.
type expiringTokens struct {
	ttl time.Duration
	mu  sync.Mutex
	exp time.Time
}

func (v *expiringTokens) Verify(context.Context, string, security.Workload) (*security.User, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.exp = time.Now().Add(v.ttl)
	return &security.User{Subject: "alice", ExpiresAt: v.exp}, nil
}

func (v *expiringTokens) expiry() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.exp
}

type streamFixture struct {
	ca    *certstest.CA
	srv   *rpctest.Server
	users *feedUsers
}

func startStreamFixture(t *testing.T, opts ...rpc.ServerOption) *streamFixture {
	t.Helper()
	authz := allowAnyWorkload(t, userv1connect.UserServiceGetUserProcedure, userv1connect.UserServiceWatchUserChangesProcedure, rpc.ReflectionV1Procedure)
	ca := certstest.NewCA(t)
	f := &streamFixture{ca: ca, users: &feedUsers{Service: &testusers.Service{Hold: make(chan struct{})}, causes: make(chan error, 10)}}
	f.srv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authz, func(s *rpc.Server) error {
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(f.users))
	}, opts...)
	return f
}

// streamProtocols are the protocols that carry streams: bidi needs HTTP/2 end
// to end, so gRPC-Web only gets the server stream.
var streamProtocols = map[string]rpc.Protocol{"connect": rpc.ProtocolConnect, "grpc": rpc.ProtocolGRPC, "grpcweb": rpc.ProtocolGRPCWeb}

func protocolOption(p rpc.Protocol) connect.ClientOption {
	switch p {
	case rpc.ProtocolGRPC:
		return connect.WithGRPC()
	case rpc.ProtocolGRPCWeb:
		return connect.WithGRPCWeb()
	}
	return connect.WithProtoJSON() // the Connect protocol, in JSON for variety
}

// openFeed opens WatchUserChanges and waits for its first message, so the
// handler is known to be running.
func (f *streamFixture) openFeed(t *testing.T, ctx context.Context, p rpc.Protocol, token string) *connect.ServerStreamForClient[userv1.WatchUserChangesResponse] {
	t.Helper()
	opts := []rpc.ClientOption{rpc.WithProtocol(p)}
	if token != "" {
		opts = append(opts, rpc.WithTokenSource(func(context.Context) (string, error) { return token, nil }))
	}
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(f.ca.Client("/client/cli")), opts...)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := client.WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{})
	if err != nil {
		t.Fatalf("open the feed: %v", err)
	}
	if !stream.Receive() {
		t.Fatalf("the feed's first message: %v", stream.Err())
	}
	return stream
}

// openReflection opens the reflection bidi stream and makes one exchange,
// after which its handler waits in Receive for the client's next request.
func (f *streamFixture) openReflection(t *testing.T, ctx context.Context, p rpc.Protocol, token string) *connect.BidiStreamForClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse] {
	t.Helper()
	hc, err := rpc.NewHTTPClient(f.ca.Source(f.ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}
	client := connect.NewClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse](
		hc, f.srv.URL+rpc.ReflectionV1Procedure, protocolOption(p))
	stream := client.CallBidiStream(ctx)
	if token != "" {
		stream.RequestHeader().Set("Authorization", "Bearer "+token)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection request: %v", err)
	}
	if _, err := stream.Receive(); err != nil {
		t.Fatalf("reflection response: %v", err)
	}
	return stream
}

func wantStreamEnd(t *testing.T, what string, err error, code connect.Code, message string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != code || ce.Message() != message {
		t.Errorf("%s ended with %v; want %v %q", what, err, code, message)
	}
}

// TestStreamsEndWhenTheirTokenExpires: a server stream whose handler waits
// on its context, and a bidi stream whose handler waits in Receive for the
// client, both end with unauthenticated "token expired" once the token
// that opened them expires — not before — over every protocol that can
// carry them (bidi needs HTTP/2 end to end: Connect and gRPC).
func TestStreamsEndWhenTheirTokenExpires(t *testing.T) {
	t.Parallel()
	for name, p := range streamProtocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tokens := &expiringTokens{ttl: 300 * time.Millisecond}
			f := startStreamFixture(t, rpc.WithTokenVerifier(tokens))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			feed := f.openFeed(t, ctx, p, "any.token.value")
			for feed.Receive() {
				t.Error("the feed sent a second message")
			}
			if time.Now().Before(tokens.expiry()) {
				t.Errorf("the feed ended before its token expired")
			}
			wantStreamEnd(t, "feed", feed.Err(), connect.CodeUnauthenticated, "token expired")
			if cause := <-f.users.causes; connect.CodeOf(cause) != connect.CodeUnauthenticated {
				t.Errorf("handler's context ended with cause %v; want the unauthenticated error", cause)
			}
			f.srv.WaitForLog(t, "msg=rpc", "procedure="+userv1connect.UserServiceWatchUserChangesProcedure, "code=unauthenticated")

			if p == rpc.ProtocolGRPCWeb {
				return // gRPC-Web has no bidi streams
			}
			refl := f.openReflection(t, ctx, p, "any.token.value")
			_, err := refl.Receive()
			if time.Now().Before(tokens.expiry()) {
				t.Errorf("the reflection stream ended before its token expired")
			}
			wantStreamEnd(t, "reflection stream", err, connect.CodeUnauthenticated, "token expired")
		})
	}
}

// TestDrainEndsStreamsAndFinishesUnaryCalls: when the server drains, open
// streams end at once with unavailable "server is draining", while a unary
// call in flight still completes; the server finishes only after it.
func TestDrainEndsStreamsAndFinishesUnaryCalls(t *testing.T) {
	t.Parallel()
	for name, p := range streamProtocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := startStreamFixture(t, rpc.WithShutdownGrace(time.Minute))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			feed := f.openFeed(t, ctx, p, "")
			var refl *connect.BidiStreamForClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse]
			if p != rpc.ProtocolGRPCWeb {
				refl = f.openReflection(t, ctx, p, "")
			}
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(f.ca.Client("/client/cli")), rpc.WithProtocol(p))
			if err != nil {
				t.Fatal(err)
			}
			unary := make(chan error, 1)
			go func() {
				_, err := client.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
				unary <- err
			}()
			for f.users.Calls() == 0 {
				time.Sleep(time.Millisecond)
			}

			stopped := make(chan error, 1)
			go func() { stopped <- f.srv.Stop() }()
			for feed.Receive() {
				t.Error("the feed sent a second message")
			}
			wantStreamEnd(t, "feed", feed.Err(), connect.CodeUnavailable, "server is draining")
			if cause := <-f.users.causes; connect.CodeOf(cause) != connect.CodeUnavailable {
				t.Errorf("handler's context ended with cause %v; want the unavailable error", cause)
			}
			if refl != nil {
				_, err := refl.Receive()
				wantStreamEnd(t, "reflection stream", err, connect.CodeUnavailable, "server is draining")
			}
			// The streams ended while the server still waits for the unary call.
			select {
			case err := <-stopped:
				t.Fatalf("server stopped with a unary call in flight: %v", err)
			case err := <-unary:
				t.Fatalf("held unary call returned during the drain: %v", err)
			default:
			}
			f.srv.WaitForLog(t, "ended open streams: server is draining")
			close(f.users.Hold)
			if err := <-unary; err != nil {
				t.Errorf("the unary call in flight failed: %v", err)
			}
			if err := <-stopped; err != nil {
				t.Errorf("Serve after the drain: %v", err)
			}
		})
	}
}

func TestStreamEnded(t *testing.T) {
	t.Parallel()
	draining := connect.NewError(connect.CodeUnavailable, errors.New("server is draining"))
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(draining)
	if err := rpc.StreamEnded(ctx); !errors.Is(err, draining) {
		t.Errorf("ended by the server: %v; want its error", err)
	}
	ctx, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := rpc.StreamEnded(ctx); connect.CodeOf(err) != connect.CodeCanceled {
		t.Errorf("ended by the client: %v; want canceled", err)
	}
	ctx, cancel3 := context.WithTimeout(context.Background(), -time.Second)
	defer cancel3()
	if err := rpc.StreamEnded(ctx); connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Errorf("deadline: %v; want deadline_exceeded", err)
	}
}

// http1Transport speaks HTTP/1.1 only, refuses any other answer, and adds
// a bearer token to every request when it has one.
type http1Transport struct {
	token string
	next  *http.Transport
}

func (h http1Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if h.token != "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+h.token)
	}
	res, err := h.next.RoundTrip(r)
	if err == nil && res.ProtoMajor != 1 {
		_ = res.Body.Close()
		return nil, errors.New("not an HTTP/1 response: " + res.Proto)
	}
	return res, err
}

// TestStreamsOverHTTP1End: a server stream over HTTP/1.1 (Connect
// protocol, as curl speaks it) is ended by token expiry and by a drain
// just as over HTTP/2.
func TestStreamsOverHTTP1End(t *testing.T) {
	t.Parallel()
	tokens := &expiringTokens{ttl: 300 * time.Millisecond}
	f := startStreamFixture(t, rpc.WithTokenVerifier(tokens), rpc.WithShutdownGrace(time.Minute))
	cfg, err := mtls.ClientConfig(f.ca.Source(f.ca.Client("/client/cli")), "127.0.0.1", mtls.AuthorizeMemberOf(certstest.TrustDomain), "http/1.1")
	if err != nil {
		t.Fatal(err)
	}
	open := func(token string) *connect.ServerStreamForClient[userv1.WatchUserChangesResponse] {
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		rt := http1Transport{token: token, next: &http.Transport{TLSClientConfig: cfg, Protocols: protocols}}
		client := userv1connect.NewUserServiceClient(&http.Client{Transport: rt}, f.srv.URL)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		stream, err := client.WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !stream.Receive() {
			t.Fatalf("first message: %v", stream.Err())
		}
		return stream
	}

	expiring := open("any.token.value")
	for expiring.Receive() {
	}
	wantStreamEnd(t, "HTTP/1.1 stream with a token", expiring.Err(), connect.CodeUnauthenticated, "token expired")
	<-f.users.causes

	draining := open("")
	stopped := make(chan error, 1)
	go func() { stopped <- f.srv.Stop() }()
	for draining.Receive() {
	}
	wantStreamEnd(t, "HTTP/1.1 stream during a drain", draining.Err(), connect.CodeUnavailable, "server is draining")
	<-f.users.causes
	if err := <-stopped; err != nil {
		t.Errorf("Serve after the drain: %v", err)
	}
}
