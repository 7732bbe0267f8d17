package rpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// echoUsers answers GetUser with a user whose display name is the caller's
// SPIFFE ID, and counts the calls that reached it.
type echoUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	calls atomic.Int64
}

func (e *echoUsers) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	e.calls.Add(1)
	p, ok := security.FromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeInternal, errors.New("no principal"))
	}
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId(), DisplayName: p.Workload.ID.String()}}, nil
}

type fixture struct {
	ca     *certstest.CA
	srv    *rpctest.Server
	users  *echoUsers
	client *certs.Issued
}

const clientID = "spiffe://palisade.local/client/cli"

func allowAll(t testing.TB) policy.Authorizer {
	t.Helper()
	a, err := policy.NewAllowList(map[string][]string{
		userv1connect.UserServiceGetUserProcedure:                   {policy.AnyWorkload},
		"/grpc.health.v1.Health/Check":                              {policy.AnyWorkload},
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": {policy.AnyWorkload},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newFixture(t *testing.T, authz policy.Authorizer) *fixture {
	t.Helper()
	ca := certstest.NewCA(t)
	users := &echoUsers{}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authz, func(s *rpc.Server) error {
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(users))
	})
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
		cfg, err := mtls.ClientConfig(src, "127.0.0.1", mtls.AuthorizeID(id))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(f.srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
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
		// wantAlert is a substring of the handshake error; empty means the
		// handshake succeeds and the call must fail with unauthenticated.
		wantAlert string
	}
	withCert := func(issued *certs.Issued) func(t *testing.T) *tls.Config {
		return func(t *testing.T) *tls.Config {
			return &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(issued)}}
		}
	}
	cases := map[string]tc{
		"no client certificate": {tlsConfig: func(t *testing.T) *tls.Config {
			return &tls.Config{RootCAs: f.ca.Pool()}
		}, wantAlert: "certificate required"},
		"certificate from another CA": {tlsConfig: withCert(otherCA.Client("/client/cli")), wantAlert: "unknown certificate authority"},
		"expired certificate": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{
			SPIFFEID: "spiffe://" + td + "/client/cli", Usage: certs.UsageClient,
			NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour),
		})), wantAlert: "expired certificate"},
		"not yet valid certificate": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{
			SPIFFEID: "spiffe://" + td + "/client/cli", Usage: certs.UsageClient,
			NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour),
		})), wantAlert: "expired certificate"}, // crypto/tls sends one alert for both ends of the validity window
		"serverAuth-only certificate": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{
			SPIFFEID: "spiffe://" + td + "/client/cli", Usage: certs.UsageServer,
		})), wantAlert: "bad certificate"},
		"TLS 1.1 client": {tlsConfig: func(t *testing.T) *tls.Config {
			cfg := withCert(f.client)(t)
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			return cfg
		}, wantAlert: "protocol version not supported"},
		"TLS 1.2 client": {tlsConfig: func(t *testing.T) *tls.Config {
			cfg := withCert(f.client)(t)
			cfg.MaxVersion = tls.VersionTLS12
			return cfg
		}, wantAlert: "protocol version not supported"},
		"certificate without SPIFFE ID":     {tlsConfig: withCert(f.ca.Issue(certs.Leaf{Usage: certs.UsageClient}))},
		"SPIFFE ID of another trust domain": {tlsConfig: withCert(f.ca.Issue(certs.Leaf{SPIFFEID: "spiffe://evil.example/client/cli", Usage: certs.UsageClient}))},
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
			if c.wantAlert != "" {
				if !strings.Contains(err.Error(), c.wantAlert) {
					t.Fatalf("error %q does not name %q", err, c.wantAlert)
				}
			} else if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("code %v (%v), want unauthenticated", connect.CodeOf(err), err)
			}
		})
	}
	t.Cleanup(func() {
		if n := f.users.calls.Load(); n != 0 {
			t.Errorf("%d refused calls reached the handler", n)
		}
	})
}
