// Package fakeagent serves the SPIFFE Workload API on a unix socket, as a
// SPIRE agent does, and pushes to its watchers the X509-SVIDs and bundles a
// test gives it: for the tests of workloadapi.Source and of what runs
// on it, without a SPIRE server and agent.
package fakeagent

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/palisade-rpc/palisade/certs"
)

// Agent is a running fake agent. It serves the X.509 stream of the
// Workload API (FetchX509SVID): each watcher gets the last push at once,
// then every later one.
type Agent struct {
	// Addr is the socket's address, "unix:///…/agent.sock", for
	// workloadapi.NewSource.
	Addr string

	mu       sync.Mutex
	latest   *workload.X509SVIDResponse
	version  int
	changed  chan struct{}     // closed, and replaced, by each push
	watchers map[*int]struct{} // the version each watcher was sent last

	workload.UnimplementedSpiffeWorkloadAPIServer
}

// Start serves a fake agent until the test ends. It has nothing to push
// until Push is called: a watcher waits, as for an agent that has no
// identity for it yet.
func Start(tb testing.TB) *Agent {
	tb.Helper()
	// Not tb.TempDir: a unix socket's path is limited to 108 bytes, and
	// test names make long directory names.
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		tb.Fatalf("fakeagent: %v", err)
	}
	path := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatalf("fakeagent: %v", err)
	}
	a := &Agent{Addr: "unix://" + path, changed: make(chan struct{}), watchers: map[*int]struct{}{}}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, a)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	tb.Cleanup(func() {
		srv.Stop()
		<-done
		_ = os.RemoveAll(dir)
	})
	return a
}

// Push sends svids to every watcher, now and as they connect, replacing
// the previous push. The first SVID is the default one. It returns once
// each watcher connected has been sent it (or after 10 seconds), so that
// pushes made one after the other reach a watcher one after the other,
// none skipped.
func (a *Agent) Push(svids ...*workload.X509SVID) {
	a.mu.Lock()
	a.latest = &workload.X509SVIDResponse{Svids: svids}
	a.version++
	version := a.version
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if a.sentToAll(version) {
			return
		}
	}
}

func (a *Agent) sentToAll(version int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for sent := range a.watchers {
		if *sent < version {
			return false
		}
	}
	return true
}

// Watchers returns the number of watchers connected now.
func (a *Agent) Watchers() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.watchers)
}

// FetchX509SVID implements the Workload API's X.509 stream. Like SPIRE's
// agent, it refuses a request without the security header
// "workload.spiffe.io: true".
func (a *Agent) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	sent := new(int)
	a.mu.Lock()
	a.watchers[sent] = struct{}{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.watchers, sent)
		a.mu.Unlock()
	}()
	for {
		a.mu.Lock()
		resp, version, changed := a.latest, a.version, a.changed
		a.mu.Unlock()
		if version > *sent {
			if err := stream.Send(resp); err != nil {
				return err
			}
			a.mu.Lock()
			*sent = version
			a.mu.Unlock()
			continue
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// SVID returns issued as the Workload API sends it: its SPIFFE ID (the
// certificate's first URI SAN, if any), its certificate, its key in
// PKCS #8 and the bundle of its trust domain, the certificates of cas.
func SVID(tb testing.TB, issued *certs.Issued, cas ...*x509.Certificate) *workload.X509SVID {
	tb.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(issued.Key)
	if err != nil {
		tb.Fatalf("fakeagent: %v", err)
	}
	svid := &workload.X509SVID{X509Svid: issued.Cert.Raw, X509SvidKey: key, Bundle: DER(cas...)}
	if len(issued.Cert.URIs) > 0 {
		svid.SpiffeId = issued.Cert.URIs[0].String()
	}
	return svid
}

// DER concatenates the DER encodings of certs, as the Workload API sends
// chains and bundles.
func DER(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.Raw...)
	}
	return b
}
