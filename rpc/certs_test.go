package rpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// peerPath answers with the serial number (hex) of the client certificate
// the server sees on the connection.
const peerPath = "/.well-known/peer"

// startWith serves testusers.Service and the peer echo with src.
func startWith(t *testing.T, src mtls.Source, users *testusers.Service, opts ...rpc.ServerOption) *rpctest.Server {
	t.Helper()
	return rpctest.Start(t, src, allowAll(t), func(s *rpc.Server) error {
		if err := users.Mount(s); err != nil {
			return err
		}
		return s.HandleHTTP(peerPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.TLS.PeerCertificates[0].SerialNumber.Text(16))
		}))
	}, opts...)
}

// watched writes issued and the bundle of cas into a new directory and
// returns a FileSource over the files, watched every 5ms until the test
// ends (goleak then checks that the watcher stopped), and its log.
func watched(t *testing.T, issued *certs.Issued, cas []*certstest.CA, opts ...mtls.FileSourceOption) (*mtls.FileSource, certstest.Files, *rpctest.Logs) {
	t.Helper()
	files := cas[0].WriteFiles(t.TempDir(), "leaf", issued)
	certstest.WriteBundle(t, files.CA, cas...)
	logger, logs := rpctest.NewLogger(t)
	src, err := mtls.NewFileSource(files.Cert, files.Key, files.CA, append([]mtls.FileSourceOption{mtls.WithLogger(logger)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Watch(ctx, 5*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
	return src, files, logs
}

// peerInfo is what one request over a client's connection saw.
type peerInfo struct {
	reused       bool   // the request went over a connection used before
	serverSerial string // of the certificate the server presented on it
	clientSerial string // of the client certificate the server saw on it
}

func peer(t *testing.T, hc *http.Client, srv *rpctest.Server) peerInfo {
	t.Helper()
	var info peerInfo
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		info.reused = ci.Reused
		if tc, ok := ci.Conn.(*tls.Conn); ok {
			info.serverSerial = tc.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
		}
	}})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+peerPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", peerPath, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", peerPath, res.StatusCode, body, err)
	}
	info.clientSerial = string(body)
	return info
}

func httpClient(t *testing.T, src mtls.Source) *http.Client {
	t.Helper()
	hc, err := rpc.NewHTTPClient(src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

func hex(i *certs.Issued) string { return i.Cert.SerialNumber.Text(16) }

// waitServing waits until src serves issued.
func waitServing(t *testing.T, src mtls.Source, issued *certs.Issued) {
	t.Helper()
	rpctest.WaitFor(t, "the watcher to load serial "+hex(issued), func() bool {
		c, _ := src.Certificate()
		return c.Leaf.SerialNumber.Cmp(issued.Cert.SerialNumber) == 0
	})
}

// rotate replaces the certificate and key in files with issued and waits
// until src serves it.
func rotate(t *testing.T, ca *certstest.CA, files certstest.Files, src mtls.Source, issued *certs.Issued) {
	t.Helper()
	ca.WritePair(files, issued)
	waitServing(t, src, issued)
}

// waitBundle writes the bundle of cas to files.CA and waits until src has
// loaded it.
func waitBundle(t *testing.T, src mtls.Source, files certstest.Files, cas ...*certstest.CA) {
	t.Helper()
	before, _ := src.TrustBundle()
	certstest.WriteBundle(t, files.CA, cas...)
	rpctest.WaitFor(t, "the watcher to load the CA bundle", func() bool {
		now, _ := src.TrustBundle()
		return now != before
	})
}

// TestRotationWithoutRestart rotates the server's certificate, the client's
// certificate and then the CA itself through the files both sides watch.
// After each step the connection opened at the start keeps working with the
// material of its handshake, and a new connection carries the new material.
func TestRotationWithoutRestart(t *testing.T) {
	t.Parallel()
	ca1, ca2 := certstest.NewCA(t), certstest.NewCA(t)
	serverCert, clientCert := ca1.Server("/svc/user"), ca1.Client("/client/cli")
	serverSrc, serverFiles, _ := watched(t, serverCert, []*certstest.CA{ca1})
	clientSrc, clientFiles, _ := watched(t, clientCert, []*certstest.CA{ca1})
	srv := startWith(t, serverSrc, &testusers.Service{})

	first := httpClient(t, clientSrc)
	if got := peer(t, first, srv); got != (peerInfo{false, hex(serverCert), hex(clientCert)}) {
		t.Fatalf("first connection: %+v", got)
	}
	check := func(step string, fresh peerInfo, wantServer, wantClient *certs.Issued) {
		t.Helper()
		if got := peer(t, first, srv); got != (peerInfo{true, hex(serverCert), hex(clientCert)}) {
			t.Fatalf("%s: the first connection got %+v, want it reused with its original certificates", step, got)
		}
		if fresh != (peerInfo{false, hex(wantServer), hex(wantClient)}) {
			t.Fatalf("%s: a new connection got %+v, want server %s client %s", step, fresh, hex(wantServer), hex(wantClient))
		}
	}

	server2 := ca1.Server("/svc/user")
	rotate(t, ca1, serverFiles, serverSrc, server2)
	check("server certificate rotated", peer(t, httpClient(t, clientSrc), srv), server2, clientCert)

	client2 := ca1.Client("/client/cli")
	rotate(t, ca1, clientFiles, clientSrc, client2)
	check("client certificate rotated", peer(t, httpClient(t, clientSrc), srv), server2, client2)

	// CA rotation: both trust both CAs, then both get leaves of the new CA,
	// then both drop the old CA.
	waitBundle(t, serverSrc, serverFiles, ca1, ca2)
	waitBundle(t, clientSrc, clientFiles, ca1, ca2)
	server3, client3 := ca2.Server("/svc/user"), ca2.Client("/client/cli")
	rotate(t, ca2, serverFiles, serverSrc, server3)
	rotate(t, ca2, clientFiles, clientSrc, client3)
	waitBundle(t, serverSrc, serverFiles, ca2)
	waitBundle(t, clientSrc, clientFiles, ca2)
	check("CA rotated", peer(t, httpClient(t, clientSrc), srv), server3, client3)

	// The server no longer trusts the old CA for new handshakes.
	old, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, mtls.NewStaticSource(certstest.TLSCertificate(ca1.Client("/client/cli")), ca2.Pool()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err == nil {
		t.Fatal("a certificate of the retired CA was accepted")
	}
	srv.WaitForLog(t, "TLS handshake error", "certificate signed by unknown authority")
}

// TestRotationUnderLoad rotates the server's and the client's certificates,
// and then the CA, while calls run without pause: over long-lived
// connections, and over a new connection per call so that handshakes race
// with the swaps. No call may fail.
func TestRotationUnderLoad(t *testing.T) {
	t.Parallel()
	ca1, ca2 := certstest.NewCA(t), certstest.NewCA(t)
	serverSrc, serverFiles, _ := watched(t, ca1.Server("/svc/user"), []*certstest.CA{ca1})
	clientSrc, clientFiles, _ := watched(t, ca1.Client("/client/cli"), []*certstest.CA{ca1})
	srv := startWith(t, serverSrc, &testusers.Service{})

	// Four callers over long-lived connections, two that dial per call.
	clients := make([]*http.Client, 6)
	for i := range clients {
		clients[i] = httpClient(t, clientSrc)
	}
	load := rpctest.StartLoad(t, len(clients), func(i int) error {
		_, err := userv1connect.NewUserServiceClient(clients[i], srv.URL).GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
		if i >= 4 {
			clients[i].CloseIdleConnections() // the next call dials anew
		}
		return err
	})
	progress := func(step string) { t.Helper(); load.Progress(t, step, 50) }

	progress("start")
	server2, client2 := ca1.Server("/svc/user"), ca1.Client("/client/cli")
	rotate(t, ca1, serverFiles, serverSrc, server2)
	progress("server rotation")
	rotate(t, ca1, clientFiles, clientSrc, client2)
	progress("client rotation")
	waitBundle(t, serverSrc, serverFiles, ca1, ca2)
	waitBundle(t, clientSrc, clientFiles, ca1, ca2)
	server3, client3 := ca2.Server("/svc/user"), ca2.Client("/client/cli")
	rotate(t, ca2, serverFiles, serverSrc, server3)
	progress("server moved to the new CA")
	rotate(t, ca2, clientFiles, clientSrc, client3)
	progress("client moved to the new CA")
	waitBundle(t, serverSrc, serverFiles, ca2)
	waitBundle(t, clientSrc, clientFiles, ca2)
	progress("old CA retired")
	load.Stop()

	t.Logf("%d calls succeeded, %d failed, across three rotations", load.OK(), load.Failed())
	if n := load.Failed(); n > 0 {
		t.Fatalf("%d calls failed during rotation; first: %v", n, load.FirstError())
	}
	if got := peer(t, httpClient(t, clientSrc), srv); got != (peerInfo{false, hex(server3), hex(client3)}) {
		t.Fatalf("a new connection after the rotations got %+v, want server %s client %s", got, hex(server3), hex(client3))
	}
}

// shortLifetime is the lifetime of the certificates that tests let expire
// with a connection open. Their setup (a server start, a handshake, a call
// put in flight) must end before the expiry, so the lifetime leaves that
// setup a wide margin on a loaded machine (3 s did not always; a
// certificate's NotAfter is also cut to the second), and heldBefore checks
// that it did.
const shortLifetime = 10 * time.Second

// heldBefore waits until arrived says the held call reached its handler and
// fails the test if that was not before notAfter: the test would then not
// be cutting a connection at expiry.
func heldBefore(t *testing.T, notAfter time.Time, arrived func() bool) {
	t.Helper()
	rpctest.WaitFor(t, "the held call", arrived)
	if left := time.Until(notAfter); left <= 0 {
		t.Fatalf("the setup overran the certificate's lifetime by %s", -left)
	}
}

// TestExpiredPeerConnectionClosed: a client whose certificate expires while
// its HTTP/2 connection is open loses the connection at expiry, with the
// call it had in flight; another client's connection is untouched; the
// expired certificate cannot connect again.
func TestExpiredPeerConnectionClosed(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	users := &testusers.Service{Hold: make(chan struct{})}
	srv := startWith(t, ca.Source(ca.Server("/svc/user")), users)
	shortLived := ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/client/cli", Usage: certs.UsageClient,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(shortLifetime)})
	short, long := httpClient(t, ca.Source(shortLived)), httpClient(t, ca.Source(ca.Client("/client/other")))
	peer(t, short, srv)
	peer(t, long, srv)

	shortCall, longCall := heldCall(short, srv), heldCall(long, srv)
	heldBefore(t, shortLived.Cert.NotAfter, func() bool { return users.Calls() == 2 })
	cutOnly(t, srv, users, "expired", short, shortCall, long, longCall,
		"closing connection: the peer's certificate has expired", "not_after="+shortLived.Cert.NotAfter.UTC().Format(time.RFC3339))
	srv.WaitForLog(t, "TLS handshake error", "is after "+shortLived.Cert.NotAfter.UTC().Format(time.RFC3339))
}

// cutOnly checks that the connection of client cut was closed (its held
// call fails, the server logs log if any is given, and cut cannot connect
// again) and only that one: the held call of client kept succeeds once
// users.Hold is closed, and its connection is reused.
func cutOnly(t *testing.T, srv *rpctest.Server, users *testusers.Service, why string,
	cut *http.Client, cutCall chan error, kept *http.Client, keptCall chan error, log ...string) {
	t.Helper()
	select {
	case err := <-cutCall:
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("in-flight call of the %s client: %v, want unavailable (connection closed)", why, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the %s client's connection stayed open", why)
	}
	if len(log) > 0 {
		srv.WaitForLog(t, log...)
	}
	close(users.Hold)
	if err := <-keptCall; err != nil {
		t.Fatalf("the other client's in-flight call: %v", err)
	}
	if got := peer(t, kept, srv); !got.reused {
		t.Fatal("the other client's connection was closed too")
	}
	if _, err := userv1connect.NewUserServiceClient(cut, srv.URL).GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err == nil {
		t.Fatalf("the %s certificate connected again", why)
	}
}

// heldCall starts a GetUser call over hc, which a Users with Hold keeps in
// flight until Hold is closed, and returns the channel of its outcome.
func heldCall(hc *http.Client, srv *rpctest.Server) chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := userv1connect.NewUserServiceClient(hc, srv.URL).GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
		errc <- err
	}()
	return errc
}

// shortLivedServer issues a certificate like ca.Server("/svc/user") that
// expires in d.
func shortLivedServer(ca *certstest.CA, d time.Duration) *certs.Issued {
	return ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/user", DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: certs.UsageWorkload,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(d)})
}

// TestExpiringServerDrained: within rpc.ExpiryDrainWindow of the expiry of
// the certificate a server presents, the server asks its clients to leave
// each connection once it has been open for a second, so a client's next
// call opens a new connection, where a rotated certificate would be
// presented.
func TestExpiringServerDrained(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	clk := newClock()
	srv := startWith(t, ca.Source(shortLivedServer(ca, rpc.ExpiryDrainWindow/2)), &testusers.Service{}, rpc.WithServerClock(clk.Now))
	hc := httpClient(t, ca.Source(ca.Client("/client/cli")))
	checkDrainedAfterASecond(t, hc, srv, clk)
	if n := srv.Count("has expired"); n != 0 {
		t.Fatalf("%d connections were cut; they should have been left", n)
	}
}

// checkDrainedAfterASecond checks, three times, that hc's calls to srv,
// whose certificates expire within rpc.ExpiryDrainWindow, open a
// connection, keep it while it is less than a second old by clk, and open a
// new one once it is older.
func checkDrainedAfterASecond(t *testing.T, hc *http.Client, srv *rpctest.Server, clk *clock) {
	t.Helper()
	for i := range 3 {
		if got := peer(t, hc, srv); got.reused {
			t.Fatalf("round %d: the first call reused a connection the server asked its client to leave", i)
		}
		if got := peer(t, hc, srv); !got.reused {
			t.Fatalf("round %d: the client was asked to leave a connection less than a second old", i)
		}
		clk.Advance(time.Second)
		// Answered on the connection, and its client asked to leave it.
		if got := peer(t, hc, srv); !got.reused {
			t.Fatalf("round %d: the client left its connection before the server asked", i)
		}
	}
}

// TestExpiringConnectionNotChurned: a client that keeps an expiring
// certificate (or meets a server's) is asked to leave a connection only
// once it has been open for a second, not after every response. Asked
// after every response, concurrent callers opened a connection per
// response, and each GOAWAY refused the calls crossing it: net/http's
// transport sends a refused call again at once, but after 1s, 2s, 4s the
// next times, and calls took over 3s (a service's upstream timeout) though
// every one was answered. Here, while the server's clock stands still, a
// burst of concurrent calls after the first goes over its connection; with
// a response on each connection draining it, the burst opened dozens.
func TestExpiringConnectionNotChurned(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	clk := newClock()
	srv := startWith(t, ca.Source(ca.Server("/svc/user")), &testusers.Service{}, rpc.WithServerClock(clk.Now))
	expiring := ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/client/cli", Usage: certs.UsageClient,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(rpc.ExpiryDrainWindow / 2)})
	hc := httpClient(t, ca.Source(expiring))
	peer(t, hc, srv)

	const callers, calls = 6, 20
	var fresh atomic.Int64
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		if !ci.Reused {
			fresh.Add(1)
		}
	}})
	errs := make(chan error, callers*calls)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range calls {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+peerPath, nil)
				if err != nil {
					errs <- err
					return
				}
				res, err := hc.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				_ = res.Body.Close()
				if res.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("status %d", res.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call: %v", err)
	}
	if n := fresh.Load(); n != 0 {
		t.Fatalf("%d calls by %d concurrent callers opened %d connections; the first connection is less than a second old and should have been kept", callers*calls, callers, n)
	}
}

// TestExpiredServerConnectionClosed: no connection outlives the server's
// certificate. A Palisade server closes its connections when the
// certificate it presented on them expires, even to a client that does not
// check (a plain HTTP/2 client); a Palisade client closes its connection to
// a server whose certificate has expired, even to a server that does not
// (a plain TLS server). Both cut the call held in flight.
func TestExpiredServerConnectionClosed(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	cutAtExpiry := func(t *testing.T, call chan error, short *certs.Issued) {
		t.Helper()
		select {
		case err := <-call:
			if err == nil {
				t.Fatal("the call held in flight succeeded")
			}
			if time.Now().Before(short.Cert.NotAfter) {
				t.Fatalf("the call failed before the certificate expired: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the connection outlived the server's certificate")
		}
	}

	t.Run("server", func(t *testing.T) {
		t.Parallel()
		short := shortLivedServer(ca, shortLifetime)
		users := &testusers.Service{Hold: make(chan struct{})}
		defer close(users.Hold)
		srv := startWith(t, ca.Source(short), users)
		plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(ca.Client("/client/cli"))}, NextProtos: []string{"h2"},
		}, ForceAttemptHTTP2: true}}
		t.Cleanup(plain.CloseIdleConnections)
		call := heldCall(plain, srv)
		heldBefore(t, short.Cert.NotAfter, func() bool { return users.Calls() == 1 })
		cutAtExpiry(t, call, short)
		srv.WaitForLog(t, "closing connection: the server's own certificate has expired",
			"not_after="+short.Cert.NotAfter.UTC().Format(time.RFC3339))
	})

	t.Run("client", func(t *testing.T) {
		t.Parallel()
		short := shortLivedServer(ca, shortLifetime)
		hold := make(chan struct{})
		var arrived atomic.Bool
		plain := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived.Store(true)
			select {
			case <-hold:
			case <-r.Context().Done():
			}
		}))
		plain.EnableHTTP2 = true
		plain.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{certstest.TLSCertificate(short)},
			ClientAuth: tls.RequireAnyClientCert}
		plain.StartTLS()
		defer plain.Close()
		defer close(hold)
		logger, logs := rpctest.NewLogger(t)
		hc, err := rpc.NewHTTPClient(ca.Source(ca.Client("/client/cli")), rpc.WithLogger(logger))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(hc.CloseIdleConnections)
		call := make(chan error, 1)
		go func() {
			res, err := hc.Get(plain.URL)
			if err == nil {
				_, err = io.ReadAll(res.Body)
				res.Body.Close()
			}
			call <- err
		}()
		heldBefore(t, short.Cert.NotAfter, arrived.Load)
		cutAtExpiry(t, call, short)
		logs.WaitForLog(t, "closing connection: the server's certificate has expired",
			"not_after="+short.Cert.NotAfter.UTC().Format(time.RFC3339))
	})
}

// TestRevokedPeerConnectionClosed: when a reloaded CRL revokes a client
// whose connection is open, the server closes that connection (its
// in-flight call fails) and the client cannot connect again; another
// client's connection and in-flight call are untouched.
func TestRevokedPeerConnectionClosed(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	revoked, kept := ca.Client("/client/cli"), ca.Client("/client/other")
	crlFile := filepath.Join(t.TempDir(), "crl.pem")
	ca.WriteCRL(crlFile, 1)
	serverSrc, _, _ := watched(t, ca.Server("/svc/user"), []*certstest.CA{ca}, mtls.WithCRL(crlFile))
	users := &testusers.Service{Hold: make(chan struct{})}
	srv := startWith(t, serverSrc, users)
	revokedClient, keptClient := httpClient(t, ca.Source(revoked)), httpClient(t, ca.Source(kept))
	peer(t, revokedClient, srv)
	peer(t, keptClient, srv)
	revokedCall, keptCall := heldCall(revokedClient, srv), heldCall(keptClient, srv)
	rpctest.WaitFor(t, "both calls in the handler", func() bool { return users.Calls() == 2 })

	ca.WriteCRL(crlFile, 2, revoked.Cert)
	cutOnly(t, srv, users, "revoked", revokedClient, revokedCall, keptClient, keptCall,
		"closing connection: the peer's certificate is revoked", "serial number "+hex(revoked)+" is revoked")
}

// TestRevokedServerConnectionClosed: when a client's reloaded CRL revokes
// the server it has a connection to, the client closes that connection
// (its in-flight call fails) and does not connect to the server again; a
// client without that CRL keeps its connection and its call.
func TestRevokedServerConnectionClosed(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	serverCert := ca.Server("/svc/user")
	users := &testusers.Service{Hold: make(chan struct{})}
	srv := startWith(t, ca.Source(serverCert), users)
	crlFile := filepath.Join(t.TempDir(), "crl.pem")
	ca.WriteCRL(crlFile, 1)
	clientSrc, _, _ := watched(t, ca.Client("/client/cli"), []*certstest.CA{ca}, mtls.WithCRL(crlFile))
	logger, clientLogs := rpctest.NewLogger(t)
	revoking, err := rpc.NewHTTPClient(clientSrc, rpc.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(revoking.CloseIdleConnections)
	kept := httpClient(t, ca.Source(ca.Client("/client/other")))
	peer(t, revoking, srv)
	peer(t, kept, srv)
	revokingCall, keptCall := heldCall(revoking, srv), heldCall(kept, srv)
	rpctest.WaitFor(t, "both calls in the handler", func() bool { return users.Calls() == 2 })

	ca.WriteCRL(crlFile, 2, serverCert.Cert)
	cutOnly(t, srv, users, "revoking", revoking, revokingCall, kept, keptCall)
	clientLogs.WaitForLog(t, "closing connection: the server's certificate is revoked", "serial number "+hex(serverCert)+" is revoked")
}

// TestRevokedPeersRefusedAtHandshake: with a CRL, a revoked client
// certificate fails the handshake while an unrevoked one of the same CA and
// identity connects; a CRL the CA did not sign is refused and logged and the
// last good one stays in force; a new CRL is picked up; and a client with a
// CRL refuses a revoked server.
func TestRevokedPeersRefusedAtHandshake(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	revoked, kept := ca.Client("/client/cli"), ca.Client("/client/cli")
	crlFile := filepath.Join(t.TempDir(), "crl.pem")
	ca.WriteCRL(crlFile, 1, revoked.Cert)
	serverCert := ca.Server("/svc/user")
	serverSrc, _, serverLogs := watched(t, serverCert, []*certstest.CA{ca}, mtls.WithCRL(crlFile))
	srv := startWith(t, serverSrc, &testusers.Service{})

	// Each attempt is a new client, so a new connection and handshake.
	attempt := func(cert *certs.Issued) error {
		client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(cert))
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
		return err
	}
	refused := func(cert *certs.Issued) {
		t.Helper()
		err := attempt(cert)
		if err == nil {
			t.Fatalf("revoked certificate %s was accepted", hex(cert))
		}
		if code := connect.CodeOf(err); code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
			t.Fatalf("revoked certificate got an RPC answer (%v); the handshake should fail", err)
		}
		srv.WaitForLog(t, "TLS handshake error", "serial number "+hex(cert)+" is revoked")
	}
	refused(revoked)
	if err := attempt(kept); err != nil {
		t.Fatalf("unrevoked certificate: %v", err)
	}

	certstest.NewCA(t).WriteCRL(crlFile, 2, kept.Cert)
	serverLogs.WaitForLog(t, "CRL refused", "not signed by a CA of the trust bundle")
	if err := attempt(kept); err != nil {
		t.Fatalf("a foreign CRL took effect: %v", err)
	}
	refused(revoked)

	ca.WriteCRL(crlFile, 3, revoked.Cert, kept.Cert)
	rpctest.WaitFor(t, "the new CRL", func() bool {
		return serverSrc.CheckRevocation([][]*x509.Certificate{{kept.Cert}}) != nil
	})
	refused(kept)

	// The client side checks the server against its CRL too.
	serverCRL := filepath.Join(t.TempDir(), "crl.pem")
	ca.WriteCRL(serverCRL, 1, serverCert.Cert)
	clientSrc, _, _ := watched(t, ca.Client("/client/other"), []*certstest.CA{ca}, mtls.WithCRL(serverCRL))
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, clientSrc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err == nil || !strings.Contains(err.Error(), "is revoked") {
		t.Fatalf("call to a revoked server: %v", err)
	}
}

// TestExpiringPeerDrained: within rpc.ExpiryDrainWindow of its certificate's
// expiry, a client is asked to leave each connection (HTTP/2 GOAWAY) once
// it has been open for a second, so its next call opens a new connection —
// where a rotated certificate would be presented — while a client with
// time left keeps its connection.
func TestExpiringPeerDrained(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	clk := newClock()
	srv := startWith(t, ca.Source(ca.Server("/svc/user")), &testusers.Service{}, rpc.WithServerClock(clk.Now))
	expiring := ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/client/cli", Usage: certs.UsageClient,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(rpc.ExpiryDrainWindow / 2)})
	drained, kept := httpClient(t, ca.Source(expiring)), httpClient(t, ca.Source(ca.Client("/client/other")))
	peer(t, kept, srv)
	checkDrainedAfterASecond(t, drained, srv, clk)
	for i := range 3 {
		if got := peer(t, kept, srv); !got.reused {
			t.Fatalf("call %d of the other client, on a connection 3s old, opened a new one", i)
		}
	}
	if n := srv.Count("closing connection: the peer's certificate has expired"); n != 0 {
		t.Fatalf("%d connections were cut; they should have been left", n)
	}
}
