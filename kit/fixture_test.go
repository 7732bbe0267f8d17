package kit_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io/fs"
	"net/http"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	"github.com/palisade-rpc/palisade/kit"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
)

// TestMain fails the package's tests if a goroutine is left running after
// they end: Run must join everything it started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The test service's identity, and the client allowed to call GetUser by
// the test layer's data.json.
const (
	serviceID = "spiffe://palisade.local/svc/kit"
	readerID  = "spiffe://palisade.local/client/reader"
)

// testLayer is the policy layer of the test service, on the framework's
// base: GetUser for the workloads listed in data.kittest.readers
// (data.json lists readerID), with the rego tests the engine requires.
func testLayer() fs.FS {
	return fstest.MapFS{
		"kittest.rego": {Data: []byte(`package palisade.authz

allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	input.peer.spiffe_id in data.kittest.readers
}
`)},
		"kittest_test.rego": {Data: []byte(`package palisade.authz_test

test_reader if data.palisade.authz.allow with input as {"procedure": "/user.v1.UserService/GetUser", "peer": {"spiffe_id": "r"}} with data.kittest.readers as ["r"]

test_other if not data.palisade.authz.allow with input as {"procedure": "/user.v1.UserService/GetUser", "peer": {"spiffe_id": "o"}} with data.kittest.readers as ["r"]
`)},
		"data.json": {Data: []byte(`{"kittest": {"readers": ["` + readerID + `"]}}`)},
	}
}

// fixture is a CA and the certificate files of the test service.
type fixture struct {
	ca    *certstest.CA
	files certstest.Files
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ca := certstest.NewCA(t)
	return &fixture{ca: ca, files: ca.WriteFiles(t.TempDir(), "kit", ca.Server("/svc/kit"))}
}

// args are the flags of a test service on 127.0.0.1 with f's certificate
// files, followed by more.
func (f *fixture) args(more ...string) []string {
	return append([]string{"--addr", "127.0.0.1:0", "--cert", f.files.Cert, "--key", f.files.Key, "--ca", f.files.CA,
		"--log-format", "text", "--log-level", "debug", "--shutdown-grace", "30s"}, more...)
}

// client returns a UserService client of the service at url, with a
// certificate of f's CA for path.
func (f *fixture) client(t *testing.T, url, path string, opts ...rpc.ClientOption) userv1connect.UserServiceClient {
	t.Helper()
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, url, f.ca.Source(f.ca.Client(path)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// running is a service run by kit.Run in the test.
type running struct {
	svc    *kit.Service
	users  *testusers.Service
	logs   *rpctest.Logs
	URL    string
	cancel context.CancelFunc
	done   chan error
}

// start runs kit.Run with args and a setup that mounts a testusers.Service
// (then calls more, if set), and waits until it serves. The test's end
// stops it, if the test did not.
func start(t *testing.T, args []string, more func(*kit.Service) error, opts ...kit.Option) *running {
	t.Helper()
	r := launch(t, args, more, opts...)
	r.waitServing(t)
	return r
}

// launch is start without the wait.
func launch(t *testing.T, args []string, more func(*kit.Service) error, opts ...kit.Option) *running {
	t.Helper()
	_, logs := rpctest.NewLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{users: &testusers.Service{}, logs: logs, cancel: cancel, done: make(chan error, 1)}
	setup := make(chan *kit.Service, 1)
	opts = append([]kit.Option{kit.WithPolicy(testLayer()), kit.WithLogOutput(logs)}, opts...)
	go func() {
		r.done <- kit.Run(ctx, "kit", args, func(s *kit.Service) error {
			setup <- s
			if err := r.users.Mount(s.Server); err != nil {
				return err
			}
			if more != nil {
				return more(s)
			}
			return nil
		}, opts...)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			r.done <- err
		case <-time.After(60 * time.Second):
			t.Error("kit.Run did not return 60 s after its context ended")
		}
	})
	select {
	case r.svc = <-setup:
	case err := <-r.done:
		r.done <- err
		t.Fatalf("kit.Run returned before setup: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("setup not called after 60 s")
	}
	return r
}

// waitServing waits until the server serves and sets r.URL.
func (r *running) waitServing(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !r.svc.Server.Serving() {
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("kit.Run returned before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("not serving after 60 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.URL = "https://" + r.svc.Server.Addr().String()
}

// stop ends Run's context and returns what Run returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// wait returns what Run returned, waiting up to 60 s.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("kit.Run did not return after 60 s")
		return nil
	}
}

// getUser calls GetUser and returns the error's code (0 for success).
func getUser(ctx context.Context, c userv1connect.UserServiceClient) (*userv1.User, connect.Code, error) {
	res, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) {
			return nil, ce.Code(), err
		}
		return nil, connect.CodeUnknown, err
	}
	return res.GetUser(), 0, nil
}

// httpGet GETs url with a plain HTTP client and returns the status.
func httpGet(t *testing.T, url string) int {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	defer c.CloseIdleConnections()
	return res.StatusCode
}

// flagSet and rpcTokenVerifier keep the tests' signatures short.
type (
	flagSet          = flag.FlagSet
	rpcTokenVerifier = rpc.TokenVerifier
)

// fixedVerifier accepts every token but "refuse", as the user subject.
type fixedVerifier struct{ subject string }

func (v fixedVerifier) Verify(_ context.Context, raw string, _ security.Workload) (*security.User, error) {
	if raw == "refuse" {
		return nil, &token.Error{Reason: "test", Detail: "refused by the test's verifier"}
	}
	return &security.User{Subject: v.subject}, nil
}

// withToken makes a client send raw as its bearer token.
func withToken(raw string) rpc.ClientOption {
	return rpc.WithTokenSource(func(context.Context) (string, error) { return raw, nil })
}

// syncWriter is a writer several goroutines may write to.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}
