package rpc_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// TestTrustDomainFollowsTheCertificate: without WithTrustDomain, a server
// admits the callers of its own certificate's trust domain and a client
// accepts the servers of its own; WithTrustDomain names another, for
// either side. Every refusal is over a real TLS connection: the server
// refuses a caller of another trust domain with unauthenticated, and the
// client refuses a server of another in the handshake, before sending
// anything.
func TestTrustDomainFollowsTheCertificate(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	workload := func(id string) mtls.Source {
		return ca.Source(ca.Issue(certs.Leaf{SPIFFEID: id, Usage: certs.UsageWorkload, IPAddresses: loopback}))
	}
	orgClient := workload("spiffe://example.org/client/cli")
	localClient := workload("spiffe://palisade.local/client/cli")
	health := allowAnyWorkload(t, rpc.HealthCheckProcedure)

	check := func(t *testing.T, srv *rpctest.Server, src mtls.Source, opts ...rpc.ClientOption) error {
		t.Helper()
		hc, err := rpc.NewHTTPClient(src, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer hc.CloseIdleConnections()
		client := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](hc, srv.URL+rpc.HealthCheckProcedure)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = client.CallUnary(ctx, connect.NewRequest(&healthpb.HealthCheckRequest{}))
		return err
	}

	t.Run("server", func(t *testing.T) {
		t.Parallel()
		// Both servers are example.org's, and the clients accept
		// example.org's servers: what is tested here is whom a server admits.
		orgServers := rpc.WithTrustDomain("example.org")
		org := rpctest.Start(t, workload("spiffe://example.org/svc/user"), health, nil)
		if err := check(t, org, orgClient, orgServers); err != nil {
			t.Fatalf("a caller of the server's own trust domain: %v", err)
		}
		err := check(t, org, localClient, orgServers)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("a caller of another trust domain: %v, want unauthenticated", err)
		}
		org.Logs.WaitForLog(t, "spiffe://palisade.local/client/cli is not in trust domain example.org")

		// Told otherwise, the same server admits palisade.local alone.
		told := rpctest.Start(t, workload("spiffe://example.org/svc/user"), health, nil, rpc.WithTrustDomain("palisade.local"))
		if err := check(t, told, localClient, orgServers); err != nil {
			t.Fatalf("a caller of the trust domain WithTrustDomain names: %v", err)
		}
		if err := check(t, told, orgClient, orgServers); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("a caller of the certificate's trust domain, after WithTrustDomain: %v, want unauthenticated", err)
		}
	})

	t.Run("client", func(t *testing.T) {
		t.Parallel()
		// A server of palisade.local that admits example.org's callers.
		local := rpctest.Start(t, workload("spiffe://palisade.local/svc/user"), health, nil, rpc.WithTrustDomain("example.org"))
		err := check(t, local, orgClient)
		if err == nil || !strings.Contains(err.Error(), "spiffe://palisade.local/svc/user is not in trust domain example.org") {
			t.Fatalf("a server of another trust domain: %v, want the handshake refused", err)
		}
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			t.Fatalf("the server answered (%v): the client sent a request to a server it should refuse", err)
		}
		if err := check(t, local, orgClient, rpc.WithTrustDomain("palisade.local")); err != nil {
			t.Fatalf("a server of the trust domain WithTrustDomain names: %v", err)
		}
		if err := check(t, local, localClient); connect.CodeOf(err) != connect.CodeUnauthenticated {
			// The client's default admits the server (both palisade.local);
			// the server, told example.org, refuses the client.
			t.Fatalf("a client of the server's trust domain: %v, want refused by the server", err)
		}
	})
}

// TestTrustDomainNeedsAnIdentity: with neither WithTrustDomain nor a SPIFFE
// ID in its certificate, there is no trust domain to admit callers of, and
// NewServer and NewHTTPClient say so rather than admit anyone.
func TestTrustDomainNeedsAnIdentity(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	anonymous := ca.Source(certstest.SelfSigned(t, "tool", certs.UsageWorkload))
	if _, err := rpc.NewServer(anonymous, allowAll(t)); err == nil || !strings.Contains(err.Error(), "WithTrustDomain") {
		t.Fatalf("NewServer: %v, want an error naming WithTrustDomain", err)
	}
	if _, err := rpc.NewHTTPClient(anonymous); err == nil || !strings.Contains(err.Error(), "WithTrustDomain") {
		t.Fatalf("NewHTTPClient: %v, want an error naming WithTrustDomain", err)
	}
	if _, err := rpc.NewServer(anonymous, allowAll(t), rpc.WithTrustDomain("palisade.local")); err != nil {
		t.Fatalf("NewServer with WithTrustDomain: %v", err)
	}
	if _, err := rpc.NewServer(anonymous, allowAll(t), rpc.WithTrustDomain("Not A Domain")); err == nil {
		t.Fatal("NewServer took an invalid trust domain")
	}
}
