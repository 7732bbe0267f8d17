package rpc_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/fakeagent"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/mtls/workloadapi"
)

// spireSVID issues an X509-SVID for spiffe://palisade.local<path> as SPIRE
// does — the SPIFFE ID its only SAN, no host name or address, CA:FALSE,
// clientAuth and serverAuth — valid from a minute ago until notAfter.
func spireSVID(ca *certstest.CA, path string, notAfter time.Time) *certs.Issued {
	return ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local" + path, Usage: certs.UsageWorkload,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter})
}

// agentSource starts a fake SPIRE agent that pushes first, with the
// bundle of cas, and returns a workloadapi.Source fed by it, closed when the
// test ends, and the agent.
func agentSource(t *testing.T, first *certs.Issued, cas ...*certstest.CA) (*workloadapi.Source, *fakeagent.Agent) {
	t.Helper()
	agent := fakeagent.Start(t)
	var bundle []*x509.Certificate
	for _, ca := range cas {
		bundle = append(bundle, ca.Cert)
	}
	agent.Push(fakeagent.SVID(t, first, bundle...))
	logger, _ := rpctest.NewLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewSource(ctx, agent.Addr, workloadapi.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src, agent
}

// idClient is an HTTP client of src that checks the server by the user
// service's SPIFFE ID (rpc.WithServerID), not by host name.
func idClient(t *testing.T, src mtls.Source, opts ...rpc.ClientOption) *http.Client {
	t.Helper()
	hc, err := rpc.NewHTTPClient(src, append([]rpc.ClientOption{rpc.WithServerID(userServerID)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

func callUser(t *testing.T, hc *http.Client, srv *rpctest.Server) error {
	t.Helper()
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, nil, rpc.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
	return err
}

// TestServerCheckedByID: a server whose SVID names no host or address, as
// SPIRE's do, is accepted by a client that knows its SPIFFE ID
// (rpc.WithServerID) and refused, over the same connection attempt, by one
// that expects another ID; a client without WithServerID checks the host
// name, as before, and refuses it too.
func TestServerCheckedByID(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	src, _ := agentSource(t, spireSVID(ca, "/svc/user", time.Now().Add(time.Hour)), ca)
	srv := startWith(t, src, &testusers.Service{})
	client := ca.Source(ca.Client("/client/cli"))

	if err := callUser(t, idClient(t, client), srv); err != nil {
		t.Fatalf("the server checked by its SPIFFE ID: %v", err)
	}
	hc, err := rpc.NewHTTPClient(client, rpc.WithServerID("spiffe://palisade.local/svc/order"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	err = callUser(t, hc, srv)
	if connect.CodeOf(err) != connect.CodeUnavailable ||
		!strings.Contains(err.Error(), "peer is spiffe://palisade.local/svc/user, want spiffe://palisade.local/svc/order") {
		t.Fatalf("a client that wants another server: %v, want unavailable naming both IDs", err)
	}
	err = callUser(t, httpClient(t, client), srv)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "doesn't contain any IP SANs") {
		t.Fatalf("a client that checks the host name: %v, want unavailable (no IP SAN)", err)
	}
	if n := srv.Count("msg=rpc procedure=/user.v1.UserService/GetUser"); n != 1 {
		t.Fatalf("%d calls reached the server, want the first only", n)
	}
}

// TestWorkloadAPIRotation rotates the SVIDs and the bundle a server (and a
// client) get from their agents, as SPIRE does: pushed, not written to
// files.
func TestWorkloadAPIRotation(t *testing.T) {
	t.Parallel()

	// An SVID rotated with time to spare (SPIRE rotates at half the
	// lifetime): the connections made with it carry on with it — until it
	// expires, or is within rpc.ExpiryDrainWindow of it, which the next
	// subtest takes — while new handshakes take the pushed one. A pushed
	// bundle is trusted from the next handshake.
	t.Run("open connections keep their SVID; new ones take the pushed SVID and bundle", func(t *testing.T) {
		t.Parallel()
		ca, ca2 := certstest.NewCA(t), certstest.NewCA(t)
		a := spireSVID(ca, "/svc/user", time.Now().Add(time.Hour))
		src, agent := agentSource(t, a, ca)
		srv := startWith(t, src, &testusers.Service{})
		client := ca.Source(ca.Client("/client/cli"))
		open := idClient(t, client)
		if got := peer(t, open, srv); got.serverSerial != hex(a) {
			t.Fatalf("server presented %s, want A %s", got.serverSerial, hex(a))
		}

		b := spireSVID(ca, "/svc/user", time.Now().Add(time.Hour))
		agent.Push(fakeagent.SVID(t, b, ca.Cert))
		waitServing(t, src, b)
		if got := peer(t, open, srv); !got.reused || got.serverSerial != hex(a) {
			t.Fatalf("the open connection after the push: %+v, want it kept, with A %s", got, hex(a))
		}
		if got := peer(t, idClient(t, client), srv); got.reused || got.serverSerial != hex(b) {
			t.Fatalf("a new connection after the push: %+v, want B %s", got, hex(b))
		}

		other := ca2.Client("/client/other")
		ofCA2 := mtls.NewStaticSource(certstest.TLSCertificate(other), ca.Pool())
		// TLS 1.3: the server judges the client's certificate after the
		// client's side of the handshake, so what the client sees varies
		// (a TLS alert, a reset, a broken pipe); the server's log says.
		if err := callUser(t, idClient(t, ofCA2), srv); err == nil {
			t.Fatal("a client of a CA not yet in the bundle was served")
		}
		srv.WaitForLog(t, "TLS handshake error", "certificate signed by unknown authority")
		if n := srv.Count("peer=spiffe://palisade.local/client/other"); n != 0 {
			t.Fatalf("a client of a CA not yet in the bundle reached the server %d times", n)
		}
		agent.Push(fakeagent.SVID(t, b, ca.Cert, ca2.Cert))
		rpctest.WaitFor(t, "the pushed bundle", func() bool {
			pool, _ := src.TrustBundle()
			_, err := other.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			return err == nil
		})
		if got := peer(t, idClient(t, ofCA2), srv); got.serverSerial != hex(b) || got.clientSerial != hex(other) {
			t.Fatalf("a client of the CA the pushed bundle added: %+v", got)
		}
	})

	// The path that matters when the agent is slow or the SVID short: A,
	// the server's and the client's, is already within the drain window
	// when B is pushed. The server asks the client to leave each
	// connection made with A once it is a second old (by the server's
	// clock, which the test moves), the client reconnects with B, and a
	// connection with B is kept — with no call failing, under load, and
	// none cut at A's expiry, which is a minute away: the push, not the
	// clock, moves the test on.
	t.Run("clients move to the pushed SVID's connections without a failed call", func(t *testing.T) {
		t.Parallel()
		ca := certstest.NewCA(t)
		expiry := time.Now().Add(rpc.ExpiryDrainWindow - time.Second)
		a, clientA := spireSVID(ca, "/svc/user", expiry), spireSVID(ca, "/svc/order", expiry)
		src, agent := agentSource(t, a, ca)
		clientSrc, clientAgent := agentSource(t, clientA, ca)
		clk := newClock()
		srv := startWith(t, src, &testusers.Service{}, rpc.WithServerClock(clk.Now))

		probe := idClient(t, clientSrc)
		for i := range 3 {
			got := peer(t, probe, srv)
			if got.reused || got.serverSerial != hex(a) || got.clientSerial != hex(clientA) {
				t.Fatalf("round %d with A: %+v, want a new connection, with A", i, got)
			}
			clk.Advance(time.Second)
			// Answered on the connection, and the client asked to leave it.
			if got := peer(t, probe, srv); !got.reused || got.serverSerial != hex(a) {
				t.Fatalf("round %d with A, a second later: %+v, want the connection kept until then", i, got)
			}
		}
		hc := idClient(t, clientSrc)
		users, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, clientSrc, rpc.WithHTTPClient(hc))
		if err != nil {
			t.Fatal(err)
		}
		load := rpctest.StartLoad(t, 4, func(int) error {
			_, err := users.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
			return err
		})
		load.Progress(t, "with A", 30)

		b, clientB := spireSVID(ca, "/svc/user", time.Now().Add(time.Hour)), spireSVID(ca, "/svc/order", time.Now().Add(time.Hour))
		agent.Push(fakeagent.SVID(t, b, ca.Cert))
		clientAgent.Push(fakeagent.SVID(t, clientB, ca.Cert))
		waitServing(t, src, b)
		waitServing(t, clientSrc, clientB)
		clk.Advance(time.Second) // every connection made with A is a second old
		load.Progress(t, "with B", 30)
		for name, c := range map[string]*http.Client{"probe": probe, "loaded": hc} {
			for i := range 2 {
				got := peer(t, c, srv)
				if got.serverSerial != hex(b) || got.clientSerial != hex(clientB) || (i > 0 && !got.reused) {
					t.Fatalf("%s client, call %d after the push: %+v, want a kept connection with B", name, i, got)
				}
			}
		}
		load.Stop()
		left := time.Until(a.Cert.NotAfter)
		t.Logf("%d calls succeeded, %d failed; moved to B with %s left on A", load.OK(), load.Failed(), left.Round(time.Millisecond))
		if left <= 0 {
			t.Fatalf("the test outlasted A (expired %s ago); the push was meant to come well before", -left)
		}
		if n := load.Failed(); n > 0 {
			t.Fatalf("%d calls failed; first: %v", n, load.FirstError())
		}
		if n := srv.Count("has expired"); n != 0 {
			t.Fatalf("%d connections were cut at expiry; they should have been left", n)
		}
	})
}
