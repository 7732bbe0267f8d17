package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// userServerID is the SPIFFE ID every replica of the user service presents.
const userServerID = "spiffe://palisade.local/svc/user"

// whoPath answers with the replica's name and the serial number (hex) of
// the client certificate it sees on the connection.
const whoPath = "/.well-known/who"

// countingUsers is one replica's user service. GetUser (no side effects)
// and UpdateUser (side effects) count the calls that reach them; a call for
// which hold returns true waits in the handler until its context ends.
type countingUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	name          string
	gets, updates atomic.Int64
	hold          func() bool
}

func (u *countingUsers) held(ctx context.Context) error {
	if u.hold != nil && u.hold() {
		<-ctx.Done()
		return connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	return nil
}

func (u *countingUsers) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	u.gets.Add(1)
	if err := u.held(ctx); err != nil {
		return nil, err
	}
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId(), DisplayName: u.name}}, nil
}

func (u *countingUsers) UpdateUser(ctx context.Context, req *userv1.UpdateUserRequest) (*userv1.UpdateUserResponse, error) {
	u.updates.Add(1)
	if err := u.held(ctx); err != nil {
		return nil, err
	}
	return &userv1.UpdateUserResponse{User: &userv1.User{Id: req.GetUser().GetId(), DisplayName: u.name}}, nil
}

// replica is one running server of a replicated user service.
type replica struct {
	*rpctest.Server
	users *countingUsers
}

// newReplicaServer builds a user service replica with certificate issued
// (any SPIFFE ID: a test may start an impostor).
func newReplicaServer(t testing.TB, ca *certstest.CA, issued *certs.Issued, users *countingUsers, opts ...rpc.ServerOption) (*rpc.Server, *rpctest.Logs) {
	t.Helper()
	logger, logs := rpctest.NewLogger(t)
	srv, err := rpc.NewServer(ca.Source(issued),
		allowAnyWorkload(t, userv1connect.UserServiceGetUserProcedure, userv1connect.UserServiceUpdateUserProcedure),
		append([]rpc.ServerOption{rpc.WithLogger(logger)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(users)); err != nil {
		t.Fatal(err)
	}
	if err := srv.HandleHTTP(whoPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", users.name, r.TLS.PeerCertificates[0].SerialNumber.Text(16))
	})); err != nil {
		t.Fatal(err)
	}
	return srv, logs
}

// startReplicas starts n replicas, each with its own certificate for
// userServerID, named a, b, c…
func startReplicas(t testing.TB, ca *certstest.CA, n int, opts ...rpc.ServerOption) []*replica {
	t.Helper()
	var rs []*replica
	for i := range n {
		users := &countingUsers{name: string(rune('a' + i))}
		srv, logs := newReplicaServer(t, ca, ca.Server("/svc/user"), users, opts...)
		rs = append(rs, &replica{Server: rpctest.Serve(t, srv, logs), users: users})
	}
	return rs
}

// restart starts r again at its address, with a new service.
func (r *replica) restart(t *testing.T, ca *certstest.CA) {
	t.Helper()
	r.users = &countingUsers{name: r.users.name}
	srv, logs := newReplicaServer(t, ca, ca.Server("/svc/user"), r.users)
	r.Server = rpctest.ServeAt(t, srv, logs, r.Addr)
}

func urls(rs ...*replica) []string {
	var us []string
	for _, r := range rs {
		us = append(us, r.URL)
	}
	return us
}

// balanced returns a user service client over the endpoints, through an
// HTTP client made by NewHTTPClient (closed when the test ends), and the
// client's log.
func balanced(t *testing.T, src mtls.Source, endpoints []string, opts ...rpc.ClientOption) (userv1connect.UserServiceClient, *rpctest.Logs) {
	t.Helper()
	logger, logs := rpctest.NewLogger(t)
	hc, err := rpc.NewHTTPClient(src, append([]rpc.ClientOption{
		rpc.WithServerID(userServerID), rpc.WithEndpoints(endpoints...), rpc.WithLogger(logger),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, endpoints[0], src, rpc.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	return c, logs
}

// updateUser calls UpdateUser, which has side effects.
func updateUser(c userv1connect.UserServiceClient) error {
	_, err := c.UpdateUser(context.Background(), &userv1.UpdateUserRequest{
		User:       &userv1.User{Id: "alice", DisplayName: "Alice"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
	})
	return err
}

func getUser(c userv1connect.UserServiceClient) error {
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
	return err
}

// calls makes n GetUser calls one after the other; all must succeed.
func calls(t *testing.T, c userv1connect.UserServiceClient, n int) {
	t.Helper()
	for i := range n {
		if err := getUser(c); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}

// clock is a clock the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestBalancedCallsSpread: 480 calls from 8 goroutines over three
// replicas reach each replica, over a handful of reused connections.
func TestBalancedCallsSpread(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 3)
	src := ca.Source(ca.Client("/client/cli"))
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, rs[0].URL, src,
		rpc.WithServerID(userServerID), rpc.WithEndpoints(rs[1].URL, rs[2].URL))
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 60
	var fresh, failed atomic.Int64
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		if !ci.Reused {
			fresh.Add(1)
		}
	}})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				if _, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"}); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	total := int64(workers * each)
	t.Logf("%d calls: a %d, b %d, c %d; %d new connections", total,
		rs[0].users.gets.Load(), rs[1].users.gets.Load(), rs[2].users.gets.Load(), fresh.Load())
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d calls failed", n)
	}
	for _, r := range rs {
		// An even spread gives each 160; a replica left out, or one taking
		// nearly all, fails this by a wide margin.
		if n := r.users.gets.Load(); n < total/3/2 {
			t.Errorf("replica %s got %d of %d calls", r.users.name, n, total)
		}
	}
	// At most one connection per replica and caller, not one per call.
	if n := fresh.Load(); n > 3*workers {
		t.Errorf("%d new connections for %d calls", n, total)
	}
}

// TestBalancedProtocols: a balanced client speaks each protocol, gRPC's
// trailers included, to every endpoint.
func TestBalancedProtocols(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 2)
	src := ca.Source(ca.Client("/client/cli"))
	for name, proto := range map[string]rpc.Protocol{"connect": rpc.ProtocolConnect, "grpc": rpc.ProtocolGRPC, "grpcweb": rpc.ProtocolGRPCWeb} {
		t.Run(name, func(t *testing.T) {
			c, err := rpc.NewClient(userv1connect.NewUserServiceClient, rs[0].URL, src,
				rpc.WithServerID(userServerID), rpc.WithEndpoints(rs[1].URL), rpc.WithProtocol(proto))
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			rpctest.WaitFor(t, "answers from both replicas", func() bool {
				res, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
				if err != nil {
					t.Fatal(err)
				}
				seen[res.GetUser().GetDisplayName()] = true
				return len(seen) == 2
			})
		})
	}
}

// TestReplicaStoppedMidLoad: three replicas under load; one holds every
// call it gets and is then stopped with a short grace, so that the calls
// it holds are cut. GetUser has no side effects: every cut call is retried
// on another replica and no call fails.
func TestReplicaStoppedMidLoad(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 2)
	users := &countingUsers{name: "c", hold: func() bool { return true }}
	srv, logs := newReplicaServer(t, ca, ca.Server("/svc/user"), users, rpc.WithShutdownGrace(100*time.Millisecond))
	stopped := &replica{Server: rpctest.Serve(t, srv, logs), users: users}
	rs = append(rs, stopped)
	c, clientLogs := balanced(t, ca.Source(ca.Client("/client/cli")), urls(rs...))

	load := rpctest.StartLoad(t, 8, func(int) error { return getUser(c) })
	rpctest.WaitFor(t, "calls held by the replica to stop", func() bool { return users.gets.Load() >= 2 })
	load.Progress(t, "start", 100)
	if err := stopped.Stop(); err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("stopping the replica: %v, want its grace period to run out on the held calls", err)
	}
	load.Progress(t, "the stop", 300)
	load.Stop()

	cut := users.gets.Load()
	served := rs[0].users.gets.Load() + rs[1].users.gets.Load()
	t.Logf("%d calls succeeded, %d failed; %d cut by the stop; the others served %d", load.OK(), load.Failed(), cut, served)
	if n := load.Failed(); n > 0 {
		t.Fatalf("%d calls failed; first: %v", n, load.FirstError())
	}
	if served != load.OK() {
		t.Fatalf("the running replicas served %d calls for %d that succeeded", served, load.OK())
	}
	clientLogs.WaitForLog(t, "endpoint ejected", "endpoint="+stopped.Addr)
}

// TestCallsRetriedOnlyWhenSafe: a call reaches a replica's handler, which
// holds it until the replica is stopped and cuts it. The client retries it
// on the other replica if it has no side effects (GetUser), and not
// otherwise (UpdateUser): that call fails with unavailable, executed once.
func TestCallsRetriedOnlyWhenSafe(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		call       func(userv1connect.UserServiceClient) error
		count      func(*countingUsers) int64
		executions int64
		code       connect.Code // 0: succeeds
	}{
		"no side effects": {
			call:       getUser,
			count:      func(u *countingUsers) int64 { return u.gets.Load() },
			executions: 2,
		},
		"side effects": {
			call:       updateUser,
			count:      func(u *countingUsers) int64 { return u.updates.Load() },
			executions: 1,
			code:       connect.CodeUnavailable,
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ca := certstest.NewCA(t)
			var first atomic.Bool // only the first execution is held
			hold := func() bool { return first.CompareAndSwap(false, true) }
			var rs []*replica
			for _, n := range []string{"a", "b"} {
				users := &countingUsers{name: n, hold: hold}
				srv, logs := newReplicaServer(t, ca, ca.Server("/svc/user"), users, rpc.WithShutdownGrace(100*time.Millisecond))
				rs = append(rs, &replica{Server: rpctest.Serve(t, srv, logs), users: users})
			}
			c, _ := balanced(t, ca.Source(ca.Client("/client/cli")), urls(rs...))
			done := make(chan error, 1)
			go func() { done <- tc.call(c) }()
			rpctest.WaitFor(t, "the call in a handler", func() bool { return tc.count(rs[0].users)+tc.count(rs[1].users) == 1 })
			holder := rs[0]
			if tc.count(rs[1].users) == 1 {
				holder = rs[1]
			}
			if err := holder.Stop(); err == nil {
				t.Fatal("the replica stopped within its grace period: the call was not cut")
			}
			err := <-done
			t.Logf("the call: %v", err)
			if tc.code == 0 && err != nil {
				t.Fatalf("the call failed: %v", err)
			}
			if got := connect.CodeOf(err); tc.code != 0 && got != tc.code {
				t.Fatalf("the call ended with %v, want %v", err, tc.code)
			}
			if n := tc.count(rs[0].users) + tc.count(rs[1].users); n != tc.executions {
				t.Fatalf("executed %d times, want %d", n, tc.executions)
			}
		})
	}
}

// TestRequestThatNeverLeftIsRetried: an endpoint that closes every
// connection before the handshake completes. A call with side effects whose
// first attempt goes there never left the client, so it is retried on the
// other endpoint and executed there once. Each of 20 clients is new, so
// that about half try the broken endpoint first.
func TestRequestThatNeverLeftIsRetried(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	good := startReplicas(t, ca, 1)[0]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = conn.Close()
		}
	})
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	src := ca.Source(ca.Client("/client/cli"))
	const clients = 20
	for i := range clients {
		c, _ := balanced(t, src, []string{"https://" + ln.Addr().String(), good.URL})
		if err := updateUser(c); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	t.Logf("%d calls; %d connections to the broken endpoint; %d executions", clients, accepted.Load(), good.users.updates.Load())
	if n := good.users.updates.Load(); n != clients {
		t.Fatalf("%d executions for %d calls", n, clients)
	}
	if accepted.Load() == 0 {
		t.Fatal("no client tried the broken endpoint") // one chance in a million
	}
}

// TestEjectedEndpointComesBack: a stopped replica is ejected after its
// dial fails; while ejected it gets no call, even once it runs again; its
// ejection doubles when a probe fails; once it has passed, a probe finds
// the replica and it gets calls again. The balancer's clock is the test's.
func TestEjectedEndpointComesBack(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 2)
	a, b := rs[0], rs[1]
	clk := newClock()
	c, logs := balanced(t, ca.Source(ca.Client("/client/cli")), urls(a, b), rpc.WithClock(clk.Now))
	rpctest.WaitFor(t, "calls on both replicas", func() bool {
		return getUser(c) == nil && a.users.gets.Load() > 0 && b.users.gets.Load() > 0
	})

	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	rpctest.WaitFor(t, "b ejected", func() bool {
		return getUser(c) == nil && logs.Count("endpoint ejected") == 1
	})
	logs.WaitForLog(t, "endpoint ejected", "endpoint="+b.Addr, "failures=1", "for=1s")

	// The ejection has passed: the next call starts a probe, which fails.
	clk.Advance(time.Second)
	calls(t, c, 1)
	logs.WaitForLog(t, "endpoint ejected", "endpoint="+b.Addr, "failures=2", "for=2s", "probe")

	b.restart(t, ca)
	clk.Advance(time.Second) // 1s of the 2s
	calls(t, c, 50)
	if n := b.users.gets.Load(); n != 0 {
		t.Fatalf("the ejected replica got %d calls", n)
	}
	clk.Advance(time.Second)
	rpctest.WaitFor(t, "b back in rotation", func() bool { return getUser(c) == nil && b.users.gets.Load() > 0 })
	logs.WaitForLog(t, "endpoint back in rotation: its probe connected", "endpoint="+b.Addr)
}

// TestAllEjectedStillTried: both replicas stopped, so both ejected; one
// comes back while the clock stands still. A call does not fail for want
// of an endpoint in rotation: it tries the ejected ones, and succeeds.
func TestAllEjectedStillTried(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 2)
	clk := newClock()
	c, logs := balanced(t, ca.Source(ca.Client("/client/cli")), urls(rs...), rpc.WithClock(clk.Now))
	calls(t, c, 1)
	for _, r := range rs {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	err := getUser(c)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("with no replica running: %v, want unavailable", err)
	}
	if n := logs.Count("endpoint ejected"); n != 2 {
		t.Fatalf("%d ejections, want both endpoints", n)
	}
	rs[1].restart(t, ca)
	calls(t, c, 5)
	if n := rs[1].users.gets.Load(); n != 5 {
		t.Fatalf("the restarted replica got %d calls, want 5", n)
	}
	logs.WaitForLog(t, "endpoint back in rotation: it answered", "endpoint="+rs[1].Addr)
}

// TestEndpointOfAnotherIdentityNeverCalled: an endpoint that presents a
// certificate the client must refuse — another workload of the trust
// domain, or a server of another CA — fails the handshake, is ejected, and
// never sees a request: the calls go to the replica that passes. Alone, it
// makes calls fail with unavailable.
func TestEndpointOfAnotherIdentityNeverCalled(t *testing.T) {
	t.Parallel()
	for name, impostor := range map[string]func(*testing.T, *certstest.CA) (*certstest.CA, *certs.Issued){
		"another workload": func(_ *testing.T, ca *certstest.CA) (*certstest.CA, *certs.Issued) {
			return ca, ca.Server("/svc/intruder")
		},
		"another CA": func(t *testing.T, _ *certstest.CA) (*certstest.CA, *certs.Issued) {
			other := certstest.NewCA(t)
			return other, other.Server("/svc/user")
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ca := certstest.NewCA(t)
			good := startReplicas(t, ca, 1)[0]
			ica, cert := impostor(t, ca)
			bad := &countingUsers{name: "impostor"}
			srv, logs := newReplicaServer(t, ica, cert, bad)
			badSrv := rpctest.Serve(t, srv, logs)
			src := ca.Source(ca.Client("/client/cli"))

			c, clientLogs := balanced(t, src, []string{badSrv.URL, good.URL})
			calls(t, c, 30)
			clientLogs.WaitForLog(t, "endpoint ejected", "endpoint="+badSrv.Addr)

			alone, _ := balanced(t, src, []string{badSrv.URL})
			err := getUser(alone)
			if connect.CodeOf(err) != connect.CodeUnavailable {
				t.Fatalf("with the impostor alone: %v, want unavailable", err)
			}
			if n := bad.gets.Load(); n != 0 {
				t.Fatalf("the impostor got %d calls", n)
			}
			if n := good.users.gets.Load(); n != 30 {
				t.Fatalf("the replica got %d calls, want 30", n)
			}
		})
	}
}

// who asks the balanced client's endpoints who they are until each has
// answered, and returns the client serial each saw last.
func who(t *testing.T, hc *http.Client, url string, names ...string) map[string]string {
	t.Helper()
	seen := map[string]string{}
	rpctest.WaitFor(t, "an answer from every replica", func() bool {
		res, err := hc.Get(url + whoPath)
		if err != nil {
			t.Fatalf("GET %s: %v", whoPath, err)
		}
		body, err := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s %v", whoPath, res.StatusCode, body, err)
		}
		name, serial, _ := strings.Cut(string(body), " ")
		seen[name] = serial
		return len(seen) == len(names)
	})
	return seen
}

// TestBalancedClientFollowsItsCertificate: after the client's certificate
// rotates, every replica is reached over a new connection that presents
// the new certificate — so a token exchanged with one replica now is bound
// to the certificate a call to any other presents — where a single
// connection would keep its old one until it closes.
func TestBalancedClientFollowsItsCertificate(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 2)
	first := ca.Client("/client/cli")
	src, files, _ := watched(t, first, []*certstest.CA{ca})
	hc, err := rpc.NewHTTPClient(src, rpc.WithServerID(userServerID), rpc.WithEndpoints(urls(rs...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	for name, serial := range who(t, hc, rs[0].URL, "a", "b") {
		if serial != hex(first) {
			t.Fatalf("%s saw client %s, want %s", name, serial, hex(first))
		}
	}
	second := ca.Client("/client/cli")
	rotate(t, ca, files, src, second)
	for name, serial := range who(t, hc, rs[0].URL, "a", "b") {
		if serial != hex(second) {
			t.Fatalf("after the rotation %s saw client %s, want %s", name, serial, hex(second))
		}
	}
}

// TestRevokedEndpointClosedAndSkipped: the client's reloaded CRL revokes
// one replica's certificate. The client closes its connection to that
// replica (the guard works per connection), its handshake is refused from
// then on, and the calls go to the other replica without failing.
func TestRevokedEndpointClosedAndSkipped(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	revokedCert := ca.Server("/svc/user")
	revokedUsers := &countingUsers{name: "a"}
	srv, logs := newReplicaServer(t, ca, revokedCert, revokedUsers)
	revoked := &replica{Server: rpctest.Serve(t, srv, logs), users: revokedUsers}
	kept := startReplicas(t, ca, 1)[0]
	crlFile := t.TempDir() + "/crl.pem"
	ca.WriteCRL(crlFile, 1)
	src, _, _ := watched(t, ca.Client("/client/cli"), []*certstest.CA{ca}, mtls.WithCRL(crlFile))
	c, clientLogs := balanced(t, src, urls(revoked, kept))
	rpctest.WaitFor(t, "calls on both replicas", func() bool {
		return getUser(c) == nil && revokedUsers.gets.Load() > 0 && kept.users.gets.Load() > 0
	})

	ca.WriteCRL(crlFile, 2, revokedCert.Cert)
	clientLogs.WaitForLog(t, "closing connection: the server's certificate is revoked", "serial number "+hex(revokedCert)+" is revoked")
	before := revokedUsers.gets.Load()
	calls(t, c, 30)
	if n := revokedUsers.gets.Load() - before; n != 0 {
		t.Fatalf("the revoked replica got %d calls after its connection was closed", n)
	}
	clientLogs.WaitForLog(t, "endpoint ejected", "endpoint="+revoked.Addr, "revoked")
}

// lookupTable is a DNS the test controls.
type lookupTable struct {
	mu      sync.Mutex
	answers map[string][]string
	err     error
}

func (l *lookupTable) set(host string, addrs ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers[host] = addrs
}

func (l *lookupTable) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}

func (l *lookupTable) lookup(_ context.Context, hostport string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	if a, ok := l.answers[hostport]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

// TestDNSEndpoints: a host name resolving to several addresses is
// balanced over them; a new answer takes effect at the next refresh (the
// address no longer listed gets no call), a failed lookup keeps the last
// addresses, and every address is verified for the name, not the address
// (or, with WithServerID, for the SPIFFE ID only).
func TestDNSEndpoints(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 3)
	a, b, cc := rs[0], rs[1], rs[2]
	dns := &lookupTable{answers: map[string][]string{}}
	dns.set("localhost:443", a.Addr, b.Addr)
	clk := newClock()
	src := ca.Source(ca.Client("/client/cli"))
	c, logs := balanced(t, src, []string{"https://localhost"},
		rpc.WithDNSEndpoints(time.Minute), rpc.WithLookup(dns.lookup), rpc.WithClock(clk.Now))
	calls(t, c, 60)
	if a.users.gets.Load() == 0 || b.users.gets.Load() == 0 || cc.users.gets.Load() != 0 {
		t.Fatalf("calls a %d, b %d, c %d: want a and b only", a.users.gets.Load(), b.users.gets.Load(), cc.users.gets.Load())
	}

	dns.set("localhost:443", b.Addr, cc.Addr)
	calls(t, c, 20)
	if n := cc.users.gets.Load(); n != 0 {
		t.Fatalf("c got %d calls before the refresh", n)
	}
	clk.Advance(time.Minute)
	rpctest.WaitFor(t, "c in rotation", func() bool { return getUser(c) == nil && cc.users.gets.Load() > 0 })
	aBefore := a.users.gets.Load()
	calls(t, c, 60)
	if n := a.users.gets.Load() - aBefore; n != 0 {
		t.Fatalf("a got %d calls after it left the answer", n)
	}
	logs.WaitForLog(t, "endpoint addresses resolved", "addresses="+b.Addr+","+cc.Addr)

	dns.fail(errors.New("server misbehaving"))
	clk.Advance(time.Minute)
	calls(t, c, 1)
	logs.WaitForLog(t, "resolving an endpoint's host failed; keeping its addresses")
	calls(t, c, 20)

	// The certificates are valid for localhost and 127.0.0.1: a check of
	// the address would pass; the name's fails. With WithServerID the
	// server is checked by its SPIFFE ID instead, and no name is checked.
	dns.set("users.test:443", a.Addr)
	dns.fail(nil)
	hc, err := rpc.NewHTTPClient(src, rpc.WithEndpoints("https://users.test"), rpc.WithDNSEndpoints(time.Minute), rpc.WithLookup(dns.lookup))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	other, err := rpc.NewClient(userv1connect.NewUserServiceClient, "https://users.test", src, rpc.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	aBefore = a.users.gets.Load()
	err = getUser(other)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "users.test") {
		t.Fatalf("a server not valid for the name: %v, want unavailable naming users.test", err)
	}
	if n := a.users.gets.Load() - aBefore; n != 0 {
		t.Fatalf("the server not valid for the name got %d calls", n)
	}
	byID, _ := balanced(t, src, []string{"https://users.test"}, rpc.WithDNSEndpoints(time.Minute), rpc.WithLookup(dns.lookup))
	if err := getUser(byID); err != nil {
		t.Fatalf("the server checked by its SPIFFE ID: %v", err)
	}

	// A name that does not resolve fails the call.
	missing, _ := balanced(t, src, []string{"https://missing.test"}, rpc.WithDNSEndpoints(time.Minute), rpc.WithLookup(dns.lookup))
	if err := getUser(missing); connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "no such host") {
		t.Fatalf("an unresolvable name: %v, want unavailable", err)
	}
}

// TestDNSResolvedAgainWhenAllEjected: the one address a name had stops
// answering and the name moves to another; the client does not wait for
// its hourly refresh: with every address ejected it resolves the name
// again (at most once a second), and its calls reach the new address.
func TestDNSResolvedAgainWhenAllEjected(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	rs := startReplicas(t, ca, 2)
	dns := &lookupTable{answers: map[string][]string{"localhost:443": {rs[0].Addr}}}
	clk := newClock()
	c, _ := balanced(t, ca.Source(ca.Client("/client/cli")), []string{"https://localhost"},
		rpc.WithDNSEndpoints(time.Hour), rpc.WithLookup(dns.lookup), rpc.WithClock(clk.Now))
	calls(t, c, 1)
	if err := rs[0].Stop(); err != nil {
		t.Fatal(err)
	}
	dns.set("localhost:443", rs[1].Addr)
	clk.Advance(time.Second)
	rpctest.WaitFor(t, "calls on the new address", func() bool { return getUser(c) == nil && rs[1].users.gets.Load() > 0 })
}

// TestEndpointOptionsRefused: endpoints that are not https URLs of one
// path, DNS without endpoints, endpoints given to a client that is handed
// an HTTP client, and a base URL that is not among that HTTP client's
// endpoints are refused, with messages that do not repeat a password.
func TestEndpointOptionsRefused(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	src := ca.Source(ca.Client("/client/cli"))
	for name, tc := range map[string]struct {
		opts []rpc.ClientOption
		want string
	}{
		"http":        {[]rpc.ClientOption{rpc.WithEndpoints("http://b:1")}, "must be https://host:port"},
		"no host":     {[]rpc.ClientOption{rpc.WithEndpoints("https:///x")}, "must be https://host:port"},
		"query":       {[]rpc.ClientOption{rpc.WithEndpoints("https://b:1?x=1")}, "must be https://host:port"},
		"other path":  {[]rpc.ClientOption{rpc.WithEndpoints("https://b:1/v2")}, "another path"},
		"not a URL":   {[]rpc.ClientOption{rpc.WithEndpoints("https://b:1/%zz")}, "endpoint 2 is not a URL"},
		"user info":   {[]rpc.ClientOption{rpc.WithEndpoints("https://u:hunter2@b:1")}, "no user info"},
		"http client": {[]rpc.ClientOption{rpc.WithEndpoints("https://b:1"), rpc.WithHTTPClient(http.DefaultClient)}, "go to NewHTTPClient"},
	} {
		_, err := rpc.NewClient(userv1connect.NewUserServiceClient, "https://a:1", src, tc.opts...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v, want an error containing %q", name, err, tc.want)
		}
	}
	if _, err := rpc.NewHTTPClient(src, rpc.WithDNSEndpoints(0)); err == nil {
		t.Error("NewHTTPClient accepted WithDNSEndpoints without endpoints")
	}
	hc, err := rpc.NewHTTPClient(src, rpc.WithEndpoints("https://a:1", "https://b:1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rpc.NewClient(userv1connect.NewUserServiceClient, "https://c:1", src, rpc.WithHTTPClient(hc)); err == nil ||
		!strings.Contains(err.Error(), "not one of the HTTP client's endpoints") {
		t.Errorf("a base URL outside the HTTP client's endpoints: %v", err)
	}
}

// BenchmarkBalancedCall compares a GetUser call through a client of one
// URL with one through a client of three endpoints (the balancer's pick,
// its lease and the response body it wraps), over loopback through the
// whole chain.
func BenchmarkBalancedCall(b *testing.B) {
	ca := certstest.NewCA(b)
	rs := startReplicas(b, ca, 3)
	src := ca.Source(ca.Client("/client/cli"))
	for _, bc := range []struct {
		name string
		opts []rpc.ClientOption
	}{
		{"one URL", nil},
		{"three endpoints", []rpc.ClientOption{rpc.WithEndpoints(rs[1].URL, rs[2].URL)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := rpc.NewClient(userv1connect.NewUserServiceClient, rs[0].URL, src, append(bc.opts, rpc.WithServerID(userServerID))...)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := getUser(c); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
