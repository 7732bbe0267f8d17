package policy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// TestStreamDeniedAtOpen: a server stream the policy denies fails when it
// opens, before the handler sends anything; the unary call it allows works.
func TestStreamDeniedAtOpen(t *testing.T) {
	t.Parallel()
	e, err := untestedEngine(t, bundle("authz.rego", `package palisade.authz
default allow := false
allow if input.procedure == "/grpc.health.v1.Health/Check"
decision := {"allow": allow, "reasons": r}
r := [] if allow else := [sprintf("%s is %s and not allowed", [input.method, input.stream_type])]
`))
	if err != nil {
		t.Fatal(err)
	}
	ca := certstest.NewCA(t)
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), e, nil)
	cfg, err := mtls.ClientConfig(ca.Source(ca.Client("/client/cli")), "127.0.0.1", mtls.AuthorizeMemberOf(certstest.TrustDomain))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("allowed unary call: %v", err)
	}
	stream, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		var res *healthpb.HealthCheckResponse
		if res, err = stream.Recv(); err == nil {
			t.Fatalf("denied stream delivered %v", res)
		}
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "Watch is server_stream and not allowed") {
		t.Fatalf("denied stream: %v", err)
	}
	srv.WaitForLog(t, "msg=decision", "procedure=/grpc.health.v1.Health/Watch", "allow=false")
}
