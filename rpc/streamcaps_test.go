package rpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// withUnknownField sets an unknown field (number 99) on m that makes it
// size bytes on the wire, and returns m.
func withUnknownField[M proto.Message](t *testing.T, m M, size int) M {
	t.Helper()
	m.ProtoReflect().SetUnknown(nil)
	for n := size - proto.Size(m) - 3; n > 0; n-- {
		pad := protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), bytes.Repeat([]byte{'u'}, n))
		m.ProtoReflect().SetUnknown(pad)
		if proto.Size(m) == size {
			return m
		}
	}
	t.Fatalf("no unknown field makes a %T of %d bytes", m, size)
	return m
}

// TestStreamByteCap: on a bidi stream (server reflection) with a cap of
// 4096 bytes, a client sending messages of 1000 bytes gets 4 answered and
// the 5th fails the stream with resource_exhausted — in Connect (binary and
// JSON) and gRPC. In the binary protocols the 1000 bytes are nearly all an
// unknown field, which the server drops: the cap counts the bytes the
// client sent, not the few the server kept.
func TestStreamByteCap(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil, rpc.WithMaxStreamBytes(4096), rpc.WithReadMaxBytes(2048))
	cases := map[string]struct {
		opts []connect.ClientOption
		msg  func(t *testing.T) *reflectionpb.ServerReflectionRequest
	}{
		"connect": {nil, func(t *testing.T) *reflectionpb.ServerReflectionRequest {
			return withUnknownField(t, proto.CloneOf(listServices), 1000)
		}},
		"grpc": {[]connect.ClientOption{connect.WithGRPC()}, func(t *testing.T) *reflectionpb.ServerReflectionRequest {
			return withUnknownField(t, proto.CloneOf(listServices), 1000)
		}},
		"connect json": {[]connect.ClientOption{connect.WithProtoJSON()}, func(t *testing.T) *reflectionpb.ServerReflectionRequest {
			// {"host":"hhh…","listServices":"*"}: protojson writes no unknown fields.
			m := proto.CloneOf(listServices)
			m.Host = strings.Repeat("h", 1000-len(`{"host":"","listServices":"*"}`))
			return m
		}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			hc, err := rpc.NewHTTPClient(l.ca.Source(l.cli))
			if err != nil {
				t.Fatal(err)
			}
			client := connect.NewClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse](hc, l.srv.URL+rpc.ReflectionV1Procedure, c.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			msg := c.msg(t)
			stream := client.CallBidiStream(ctx)
			for i := range 4 {
				if err := stream.Send(msg); err != nil {
					t.Fatalf("send %d: %v", i+1, err)
				}
				if _, err := stream.Receive(); err != nil {
					t.Fatalf("message %d (%d bytes so far): %v", i+1, 1000*(i+1), err)
				}
			}
			_ = stream.Send(msg) // the server may already have closed; the answer says why
			_, err = stream.Receive()
			wantCode(t, err, connect.CodeResourceExhausted, "a stream may carry at most 4096 bytes from the client")
			_ = stream.CloseResponse()
		})
	}
}

// unknownFields is a UserService whose handlers record how many bytes of
// unknown fields their requests held.
type unknownFields struct {
	userv1connect.UnimplementedUserServiceHandler
	mu   sync.Mutex
	seen []int
}

func (u *unknownFields) record(m proto.Message) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.seen = append(u.seen, len(m.ProtoReflect().GetUnknown()))
}

func (u *unknownFields) GetUser(_ context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	u.record(req)
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId()}}, nil
}

func (u *unknownFields) WatchUserChanges(_ context.Context, req *userv1.WatchUserChangesRequest, stream *connect.ServerStream[userv1.WatchUserChangesResponse]) error {
	u.record(req)
	return stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Heartbeat{Heartbeat: &userv1.WatchHeartbeat{}}})
}

// TestUnknownFieldsAreDropped: requests whose messages carry a 64 KiB field
// the schema does not know reach the handler without it, over Connect,
// gRPC and gRPC-Web, unary and streaming; a Connect JSON request with an
// unknown key is accepted as before, the key dropped.
func TestUnknownFieldsAreDropped(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	svc := &unknownFields{}
	authz := allowAnyWorkload(t, userv1connect.UserServiceGetUserProcedure, userv1connect.UserServiceWatchUserChangesProcedure)
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authz, func(s *rpc.Server) error {
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(svc))
	})
	cli := ca.Client("/client/cli")
	ctx := context.Background()
	calls := 0
	for name, p := range streamProtocols {
		client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(cli), rpc.WithProtocol(p))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.GetUser(ctx, withUnknownField(t, &userv1.GetUserRequest{Id: "x"}, 64<<10)); err != nil {
			t.Fatalf("%s: GetUser: %v", name, err)
		}
		stream, err := client.WatchUserChanges(ctx, withUnknownField(t, &userv1.WatchUserChangesRequest{}, 64<<10))
		if err != nil {
			t.Fatal(err)
		}
		for stream.Receive() {
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("%s: WatchUserChanges: %v", name, err)
		}
		calls += 2
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(cli)}, NextProtos: []string{"http/1.1"},
	}}}
	body := fmt.Sprintf(`{"id":"x","notAField":%q}`, strings.Repeat("u", 64<<10))
	req, _ := http.NewRequest(http.MethodPost, srv.URL+userv1connect.UserServiceGetUserProcedure, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(answer) != `{"user":{"id":"x"}}` {
		t.Fatalf("JSON with an unknown key: %d %s", res.StatusCode, answer)
	}
	calls++

	svc.mu.Lock()
	defer svc.mu.Unlock()
	if len(svc.seen) != calls {
		t.Fatalf("%d requests reached the handlers, want %d", len(svc.seen), calls)
	}
	for i, n := range svc.seen {
		if n != 0 {
			t.Errorf("request %d reached its handler with %d bytes of unknown fields", i, n)
		}
	}
}

// holdingFeed is a UserService whose WatchUserChanges sends a heartbeat and
// then waits for the stream to end; it counts the streams that reached it.
type holdingFeed struct {
	userv1connect.UnimplementedUserServiceHandler
	opened atomic.Int64
}

func (h *holdingFeed) WatchUserChanges(ctx context.Context, _ *userv1.WatchUserChangesRequest, stream *connect.ServerStream[userv1.WatchUserChangesResponse]) error {
	h.opened.Add(1)
	if err := stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Heartbeat{Heartbeat: &userv1.WatchHeartbeat{}}}); err != nil {
		return err
	}
	<-ctx.Done()
	return rpc.StreamEnded(ctx)
}

func (h *holdingFeed) GetUser(_ context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId()}}, nil
}

// TestStreamsPerPrincipal: with a cap of 3 open streams per principal,
// alice opens 3 feeds over Connect; a 4th, over Connect or gRPC on another
// connection, fails with resource_exhausted and never reaches the handler,
// while her unary calls still pass. Bob, the bare workload and another
// workload each open theirs. Once alice closes one, she may open one again.
func TestStreamsPerPrincipal(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	feed := &holdingFeed{}
	authz := allowAnyWorkload(t, userv1connect.UserServiceGetUserProcedure, userv1connect.UserServiceWatchUserChangesProcedure)
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authz, func(s *rpc.Server) error {
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(feed))
	}, rpc.WithTokenVerifier(subjectVerifier{}), rpc.WithMaxStreamsPerPrincipal(3))
	cli, other := ca.Client("/client/cli"), ca.Client("/client/other")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	client := func(cert *certs.Issued, tok string, p rpc.Protocol) userv1connect.UserServiceClient {
		t.Helper()
		opts := []rpc.ClientOption{rpc.WithProtocol(p)}
		if tok != "" {
			opts = append(opts, rpc.WithTokenSource(func(context.Context) (string, error) { return tok, nil }))
		}
		c, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(cert), opts...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// open opens a feed and returns how it went and a function to close it.
	open := func(c userv1connect.UserServiceClient) (context.CancelFunc, error) {
		t.Helper()
		streamCtx, stop := context.WithCancel(ctx)
		stream, err := c.WatchUserChanges(streamCtx, &userv1.WatchUserChangesRequest{})
		if err == nil && !stream.Receive() {
			err = stream.Err()
		}
		return stop, err
	}
	mustOpen := func(who string, c userv1connect.UserServiceClient) context.CancelFunc {
		t.Helper()
		stop, err := open(c)
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		t.Cleanup(stop)
		return stop
	}

	alice := client(cli, "alice", rpc.ProtocolConnect)
	var aliceStreams []context.CancelFunc
	for i := range 3 {
		aliceStreams = append(aliceStreams, mustOpen(fmt.Sprintf("alice's stream %d of 3", i+1), alice))
	}
	reached := feed.opened.Load()
	for _, c := range []userv1connect.UserServiceClient{alice, client(cli, "alice", rpc.ProtocolGRPC)} {
		stop, err := open(c)
		stop()
		wantCode(t, err, connect.CodeResourceExhausted, "too many open streams: a caller may have at most 3 at once")
	}
	if n := feed.opened.Load(); n != reached {
		t.Fatalf("%d refused streams reached the handler", n-reached)
	}
	if _, err := alice.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"}); err != nil {
		t.Fatalf("alice's unary call at her stream cap: %v", err)
	}

	bob := client(cli, "bob", rpc.ProtocolGRPC)
	for i := range 3 {
		mustOpen(fmt.Sprintf("bob's stream %d", i+1), bob)
	}
	mustOpen("the cli workload without a token", client(cli, "", rpc.ProtocolConnect))
	mustOpen("another workload", client(other, "", rpc.ProtocolGRPCWeb))

	aliceStreams[0]()
	// The server releases the stream once its handler returns.
	rpctest.WaitFor(t, "alice may open a stream again", func() bool {
		stop, err := open(alice)
		if err != nil {
			stop()
			return false
		}
		t.Cleanup(stop)
		return true
	})
}
