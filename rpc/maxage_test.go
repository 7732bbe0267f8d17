package rpc_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
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
)

// countingListener counts the connections a server accepts and records how
// long each lived.
type countingListener struct {
	net.Listener
	mu        sync.Mutex
	accepted  int
	lifetimes []time.Duration // of the connections closed so far
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.accepted++
	l.mu.Unlock()
	return &timedConn{Conn: c, l: l, start: time.Now()}, nil
}

func (l *countingListener) counts() (accepted, closed int, lifetimes []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted, len(l.lifetimes), slices.Clone(l.lifetimes)
}

// closedAfter returns the lifetimes of the closed connections that lived
// at least d.
func (l *countingListener) closedAfter(d time.Duration) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var old []time.Duration
	for _, lt := range l.lifetimes {
		if lt >= d {
			old = append(old, lt)
		}
	}
	return old
}

type timedConn struct {
	net.Conn
	l     *countingListener
	start time.Time
	once  sync.Once
}

func (c *timedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.lifetimes = append(c.l.lifetimes, time.Since(c.start))
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// startAged serves testusers.Service (and reflection) with
// WithMaxConnectionAge(age, grace) on a counting listener on 127.0.0.1.
func startAged(t *testing.T, ca *certstest.CA, users *testusers.Service, age, grace time.Duration) (url string, ln *countingListener, logs *rpctest.Logs) {
	t.Helper()
	logger, logs := rpctest.NewLogger(t)
	srv, err := rpc.NewServer(ca.Source(ca.Server("/svc/user")), allowAll(t), rpc.WithLogger(logger), rpc.WithMaxConnectionAge(age, grace))
	if err != nil {
		t.Fatal(err)
	}
	if err := users.Mount(srv); err != nil {
		t.Fatal(err)
	}
	if err := srv.HandleHTTP(peerPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})); err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln = &countingListener{Listener: tcp}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return "https://" + tcp.Addr().String(), ln, logs
}

// openReflectionOn opens the reflection bidi stream over hc and makes one
// exchange; its handler then waits in Receive for the next request.
func openReflectionOn(t *testing.T, ctx context.Context, hc *http.Client, url string) *connect.BidiStreamForClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse] {
	t.Helper()
	client := connect.NewClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse](
		hc, url+rpc.ReflectionV1Procedure, connect.WithGRPC())
	stream := client.CallBidiStream(ctx)
	exchange(t, stream, "first")
	return stream
}

func exchange(t *testing.T, stream *connect.BidiStreamForClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse], which string) {
	t.Helper()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("%s reflection request: %v", which, err)
	}
	if _, err := stream.Receive(); err != nil {
		t.Fatalf("%s reflection response: %v", which, err)
	}
}

// TestMaxConnectionAge: with rpc.WithMaxConnectionAge, a client calling
// without pause over one HTTP/2 connection is moved to a new one each time
// its connection reaches its age (±10%): the server accepts new TLS
// connections while no call fails. A bidi stream opened on the first
// connection outlives that connection's age and still finishes within the
// grace; the old connections close once their calls are done, none is cut.
func TestMaxConnectionAge(t *testing.T) {
	t.Parallel()
	// The grace outlasts the test: the stream must finish on its own.
	const age, grace = 300 * time.Millisecond, 5 * time.Minute
	ca := certstest.NewCA(t)
	url, ln, logs := startAged(t, ca, &testusers.Service{}, age, grace)
	hc := httpClient(t, ca.Source(ca.Client("/client/cli")))
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, url, ca.Source(ca.Client("/client/cli")), rpc.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opened := time.Now()
	stream := openReflectionOn(t, ctx, hc, url)

	load := rpctest.StartLoad(t, 4, func(int) error {
		_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
		return err
	})
	// Connections that carried calls until their age and closed: the
	// client's connection replaced. (The client may dial more than one at
	// a time and close the extra ones unused: those close younger.)
	const replaced = 3
	rpctest.WaitFor(t, "the client's connection to be replaced", func() bool {
		return len(ln.closedAfter(age*9/10)) >= replaced || load.Failed() > 0
	})
	load.Progress(t, "the replacements", 20)

	// The stream's connection is past its age, and was asked to leave by
	// the calls that started on it since: the stream goes on.
	exchange(t, stream, "second")
	if err := stream.CloseRequest(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("the stream ended with %v, want its end (EOF)", err)
	}
	if err := stream.CloseResponse(); err != nil {
		t.Fatal(err)
	}
	lived := time.Since(opened)
	load.Stop()

	if lived < age*11/10 {
		t.Fatalf("the stream lived %s, not past its connection's age", lived)
	}
	if n := load.Failed(); n != 0 {
		t.Fatalf("%d of %d calls failed; first: %v", n, n+load.OK(), load.FirstError())
	}
	// Every connection but the last closes by itself: its calls are done.
	rpctest.WaitFor(t, "the replaced connections to close", func() bool {
		accepted, closed, _ := ln.counts()
		return closed >= accepted-1
	})
	accepted, _, lifetimes := ln.counts()
	aged := ln.closedAfter(age * 9 / 10)
	slices.Sort(aged)
	t.Logf("%d calls and a stream of %s, none failed; %d connections accepted, %d replaced at their age (lived %s to %s), %d extra dials closed unused",
		load.OK(), lived.Round(time.Millisecond), accepted, len(aged), aged[0].Round(time.Millisecond), aged[len(aged)-1].Round(time.Millisecond), len(lifetimes)-len(aged))
	if n := logs.Count("closing connection"); n != 0 {
		t.Fatalf("%d connections cut; each should have been left by its client", n)
	}
}

// TestMaxConnectionAgeGrace: past a connection's age and grace, a stream
// still open on it ends with unavailable, and a unary call still running
// is cut with the connection, which the server logs; neither before. An
// idle connection past its age and grace is not cut (a call could be on
// its way): its next call is answered and asks the client to leave, so the
// call after goes over a new connection.
func TestMaxConnectionAgeGrace(t *testing.T) {
	t.Parallel()
	const age, grace = 200 * time.Millisecond, 300 * time.Millisecond
	ca := certstest.NewCA(t)

	// ended waits for a call's end, at most 30s.
	ended := func(t *testing.T, what string, call func() error) (error, time.Duration) {
		t.Helper()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			return err, time.Since(start)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still running 30s after its connection's age and grace", what)
			return nil, 0
		}
	}

	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		url, ln, logs := startAged(t, ca, &testusers.Service{}, age, grace)
		hc := httpClient(t, ca.Source(ca.Client("/client/cli")))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		opened := time.Now()
		stream := openReflectionOn(t, ctx, hc, url)
		err, _ := ended(t, "the stream", func() error { _, err := stream.Receive(); return err })
		lived := time.Since(opened)
		wantStreamEnd(t, "the stream", err, connect.CodeUnavailable, "connection reached its maximum age")
		if lived < age*9/10+grace {
			t.Fatalf("the stream was ended after %s, before its connection's age and grace", lived)
		}
		logs.WaitForLog(t, "level=INFO", "ending streams: their connection is past its maximum age and grace", "streams=1")
		if n := logs.Count("closing connection"); n != 0 {
			t.Fatalf("%d connections cut; the stream's end should have been sent", n)
		}
		if accepted, _, _ := ln.counts(); accepted != 1 {
			t.Fatalf("%d connections accepted, want 1", accepted)
		}
		t.Logf("a stream left open was ended %s after it opened", lived.Round(time.Millisecond))
	})

	t.Run("unary", func(t *testing.T) {
		t.Parallel()
		url, _, logs := startAged(t, ca, &testusers.Service{Hold: make(chan struct{})}, age, grace)
		client, err := rpc.NewClient(userv1connect.NewUserServiceClient, url, ca.Source(ca.Client("/client/cli")))
		if err != nil {
			t.Fatal(err)
		}
		err, lived := ended(t, "the held call", func() error {
			_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
			return err
		})
		if err == nil {
			t.Fatal("the held call succeeded")
		}
		if lived < age*9/10+grace {
			t.Fatalf("the call was cut after %s, before its connection's age and grace", lived)
		}
		logs.WaitForLog(t, "level=WARN", "closing connection: calls still running past its maximum age and grace", "calls=1")
		t.Logf("a unary call left running was cut after %s: %v", lived.Round(time.Millisecond), err)
	})

	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		// The first call must be answered before the age (1.8s at the
		// earliest), even on a busy machine.
		const age = 2 * time.Second
		url, ln, logs := startAged(t, ca, &testusers.Service{}, age, grace)
		hc := httpClient(t, ca.Source(ca.Client("/client/cli")))
		srv := &rpctest.Server{URL: url}
		if got := peer(t, hc, srv); got.reused {
			t.Fatal("first call reused a connection")
		}
		time.Sleep(2 * (age*11/10 + grace))
		if got := peer(t, hc, srv); !got.reused {
			t.Fatal("the idle connection was closed past its age; it should have been asked to leave at its next call")
		}
		if got := peer(t, hc, srv); got.reused {
			t.Fatal("the call after reused the connection it was asked to leave")
		}
		if accepted, _, _ := ln.counts(); accepted != 2 {
			t.Fatalf("%d connections accepted, want 2", accepted)
		}
		if n := logs.Count("closing connection"); n != 0 {
			t.Fatalf("%d connections cut", n)
		}
	})
}

// TestMaxConnectionAgeLateCall: a call that starts on a connection shortly
// before the connection's age and grace run out still gets the whole grace
// from its start.
func TestMaxConnectionAgeLateCall(t *testing.T) {
	t.Parallel()
	const age, grace = 1500 * time.Millisecond, 4 * time.Second
	ca := certstest.NewCA(t)
	users := &testusers.Service{Hold: make(chan struct{})}
	url, ln, logs := startAged(t, ca, users, age, grace)
	hc := httpClient(t, ca.Source(ca.Client("/client/cli")))
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, url, ca.Source(ca.Client("/client/cli")), rpc.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	srv := &rpctest.Server{URL: url}
	opened := time.Now()
	peer(t, hc, srv)
	if d := time.Since(opened); d >= age*9/10 {
		t.Fatalf("the first call took %s, past the connection's earliest age", d)
	}
	// The connection is past its age (1.65s at the latest), and its age and
	// grace end at 5.35s at the earliest: the call starts before.
	time.Sleep(time.Until(opened.Add(4500 * time.Millisecond)))
	done := make(chan error, 1)
	go func() {
		_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
		done <- err
	}()
	// Released 6.7s after the connection opened at the earliest, past its
	// age and grace (5.65s after it was first answered at the latest),
	// within the call's own grace (4s).
	time.Sleep(2200 * time.Millisecond)
	close(users.Hold)
	if err := <-done; err != nil {
		t.Fatalf("the late call failed: %v", err)
	}
	if accepted, _, _ := ln.counts(); accepted != 1 {
		t.Fatalf("%d connections accepted, want 1", accepted)
	}
	if got := peer(t, hc, srv); got.reused {
		t.Fatal("the call after reused the connection it was asked to leave")
	}
	if n := logs.Count("closing connection"); n != 0 {
		t.Fatalf("%d connections cut", n)
	}
}

// TestMaxConnectionAgeRefused: a negative grace is an error.
func TestMaxConnectionAgeRefused(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	_, err := rpc.NewServer(ca.Source(ca.Server("/svc/user")), allowAll(t), rpc.WithMaxConnectionAge(time.Minute, -time.Second))
	if err == nil || err.Error() != "rpc: WithMaxConnectionAge: negative grace -1s" {
		t.Fatalf("NewServer: %v, want the negative grace refused", err)
	}
}
