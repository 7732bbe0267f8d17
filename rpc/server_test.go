package rpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

type fixture struct {
	ca     *certstest.CA
	srv    *rpctest.Server
	users  *testusers.Service
	client *certs.Issued
}

const clientID = "spiffe://palisade.local/client/cli"

func allowAll(t testing.TB) authz.Authorizer {
	t.Helper()
	return allowAnyWorkload(t, userv1connect.UserServiceGetUserProcedure, rpc.HealthCheckProcedure, rpc.ReflectionV1Procedure)
}

// allowAnyWorkload is an allow-list that lets any workload of the trust
// domain call procedures, and nothing else.
func allowAnyWorkload(t testing.TB, procedures ...string) authz.Authorizer {
	t.Helper()
	rules := map[string]authz.Rule{}
	for _, p := range procedures {
		rules[p] = authz.Rule{Workloads: []string{authz.AnyWorkload}}
	}
	a, err := authz.NewAllowList(rules)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newFixture(t *testing.T, authorizer authz.Authorizer, opts ...rpc.ServerOption) *fixture {
	t.Helper()
	ca := certstest.NewCA(t)
	users := &testusers.Service{}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authorizer, users.Mount, opts...)
	return &fixture{ca: ca, srv: srv, users: users, client: ca.Client("/client/cli")}
}

func TestProtocolsInteroperate(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	src := f.ca.Source(f.client)

	for name, proto := range map[string]rpc.Protocol{"connect": rpc.ProtocolConnect, "grpc": rpc.ProtocolGRPC, "grpcweb": rpc.ProtocolGRPCWeb} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, src, rpc.WithProtocol(proto), rpc.WithServerID("spiffe://palisade.local/svc/user"))
			if err != nil {
				t.Fatal(err)
			}
			res, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
			if err != nil {
				t.Fatalf("GetUser: %v", err)
			}
			if res.GetUser().GetId() != "alice" || res.GetUser().GetDisplayName() != clientID {
				t.Fatalf("got %v", res.GetUser())
			}
		})
	}

	t.Run("grpc-go", func(t *testing.T) {
		t.Parallel()
		id, _ := spiffeid.Parse("spiffe://palisade.local/svc/user")
		conn := rpctest.GRPCGo(t, f.srv.Addr, src, mtls.AuthorizeID(id))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res userv1.GetUserResponse
		if err := conn.Invoke(ctx, userv1connect.UserServiceGetUserProcedure, &userv1.GetUserRequest{Id: "bob"}, &res); err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		if res.GetUser().GetId() != "bob" || res.GetUser().GetDisplayName() != clientID {
			t.Fatalf("got %v", res.GetUser())
		}
		hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "user.v1.UserService"})
		if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health: %v %v", hc, err)
		}
		// A procedure the allow-list does not name is denied through grpc-go too.
		err = conn.Invoke(ctx, userv1connect.UserServiceListUsersProcedure, &userv1.ListUsersRequest{}, &userv1.ListUsersResponse{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("ListUsers: %v, want PermissionDenied", err)
		}
	})

	t.Run("curl-like HTTP/1.1 JSON", func(t *testing.T) {
		t.Parallel()
		cert := certstest.TLSCertificate(f.client)
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"},
		}}}
		res, err := hc.Post(f.srv.URL+userv1connect.UserServiceGetUserProcedure, "application/json", strings.NewReader(`{"id":"carol"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 || res.ProtoMajor != 1 || !bytes.Contains(body, []byte(`"id":"carol"`)) {
			t.Fatalf("status %d proto %s body %s", res.StatusCode, res.Proto, body)
		}
		// NO_SIDE_EFFECTS procedures are served over GET too.
		get, err := hc.Get(f.srv.URL + userv1connect.UserServiceGetUserProcedure + `?encoding=json&message={"id":"dan"}`)
		if err != nil {
			t.Fatal(err)
		}
		defer get.Body.Close()
		body, _ = io.ReadAll(get.Body)
		if get.StatusCode != 200 || !bytes.Contains(body, []byte(`"id":"dan"`)) {
			t.Fatalf("GET: status %d body %s", get.StatusCode, body)
		}
	})
}

// TestRefusedPeers presents bad client credentials. Every case makes a real
// RPC (with TLS 1.3 a refused client certificate only surfaces on the first
// read) and checks that it fails as documented and that no handler ran.
func TestRefusedPeers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	otherCA := certstest.NewCA(t)
	now := time.Now()
	td := certstest.TrustDomain

	type tc struct {
		tlsConfig func(t *testing.T) *tls.Config
		// serverLog is what the server logs about the refused handshake; empty
		// means the handshake succeeds and the call must fail with
		// unauthenticated, logged with reason.
		serverLog []string
		reason    string
	}
	withCert := func(issued *certs.Issued) func(t *testing.T) *tls.Config {
		return func(t *testing.T) *tls.Config {
			return &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(issued)}}
		}
	}
	notBefore := f.ca.Issue(certs.Leaf{
		SPIFFEID: "spiffe://" + td + "/client/cli", Usage: certs.UsageClient,
		NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour),
	})
	expired := f.ca.Issue(certs.Leaf{
		SPIFFEID: "spiffe://" + td + "/client/cli", Usage: certs.UsageClient,
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour),
	})
	cases := map[string]tc{
		"no client certificate": {tlsConfig: func(t *testing.T) *tls.Config {
			return &tls.Config{RootCAs: f.ca.Pool()}
		}, serverLog: []string{"TLS handshake error", "client didn't provide a certificate"}},
		"certificate from another CA": {tlsConfig: withCert(otherCA.Client("/client/cli")),
			serverLog: []string{"TLS handshake error", "certificate signed by unknown authority"}},
		"expired certificate": {tlsConfig: withCert(expired),
			serverLog: []string{"TLS handshake error", "is after " + expired.Cert.NotAfter.UTC().Format(time.RFC3339)}},
		"not yet valid certificate": {tlsConfig: withCert(notBefore),
			serverLog: []string{"TLS handshake error", "is before " + notBefore.Cert.NotBefore.UTC().Format(time.RFC3339)}},
		"serverAuth-only certificate": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{
			SPIFFEID: "spiffe://" + td + "/client/cli", Usage: certs.UsageServer,
		})), serverLog: []string{"TLS handshake error", "incompatible key usage"}},
		"TLS 1.1 client": {tlsConfig: func(t *testing.T) *tls.Config {
			cfg := withCert(f.client)(t)
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			return cfg
		}, serverLog: []string{"TLS handshake error", "unsupported versions: [302 301]"}},
		"TLS 1.2 client": {tlsConfig: func(t *testing.T) *tls.Config {
			cfg := withCert(f.client)(t)
			cfg.MaxVersion = tls.VersionTLS12
			return cfg
		}, serverLog: []string{"TLS handshake error", "unsupported versions: [303]"}},
		"certificate without SPIFFE ID": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{Usage: certs.UsageClient})),
			reason: "certificate has no URI SAN"},
		"SPIFFE ID of another trust domain": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{SPIFFEID: "spiffe://evil.example/client/cli", Usage: certs.UsageClient})),
			reason: "spiffe://evil.example/client/cli is not in trust domain palisade.local"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := c.tlsConfig(t)
			cfg.NextProtos = []string{"h2"}
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
			client := userv1connect.NewUserServiceClient(hc, f.srv.URL)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := client.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
			if err == nil {
				t.Fatal("call succeeded")
			}
			if c.serverLog != nil {
				// The client sees a TLS alert or, when the server closes first,
				// a broken connection; never an RPC answer.
				if code := connect.CodeOf(err); code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
					t.Fatalf("handshake should have failed, got RPC error %v", err)
				}
				f.srv.WaitForLog(t, c.serverLog...)
				return
			}
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("code %v (%v), want unauthenticated", connect.CodeOf(err), err)
			}
			f.srv.WaitForLog(t, "request refused: unauthenticated", c.reason)
		})
	}
	t.Cleanup(func() {
		if n := f.users.Calls(); n != 0 {
			t.Errorf("%d refused calls reached the handler", n)
		}
	})
}

// TestDrainFinishesInFlightCalls stops a server while a call is in its
// handler: the call completes, a call made during the drain is refused, and
// Serve returns nil.
func TestDrainFinishesInFlightCalls(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	users := &testusers.Service{Hold: make(chan struct{})}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), allowAll(t), users.Mount, rpc.WithShutdownGrace(30*time.Second))
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}
	inFlight := make(chan error, 1)
	go func() {
		_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
		inFlight <- err
	}()
	for users.Calls() == 0 {
		time.Sleep(time.Millisecond)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	srv.WaitForLog(t, "draining")

	// A new connection is refused while the drain waits for the held call.
	late, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := late.GetUser(context.Background(), &userv1.GetUserRequest{Id: "bob"}); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("call during drain: %v, want unavailable", err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("server stopped with a call in flight: %v", err)
	default:
	}
	close(users.Hold)
	if err := <-inFlight; err != nil {
		t.Fatalf("in-flight call failed: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Serve after drain: %v", err)
	}
}
