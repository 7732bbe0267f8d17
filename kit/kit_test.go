package kit_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/fakeagent"
	"github.com/palisade-rpc/palisade/kit"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/token"
)

// TestLoopFailureStopsTheService: a loop started with Service.Go that
// fails while the service serves is logged at ERROR with its name, the
// server drains (a call in flight completes), every other loop is told to
// stop and joined, and Run returns the loop's error.
func TestLoopFailureStopsTheService(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	boom := errors.New("the feed is gone")
	fail := make(chan struct{})
	var otherReturned atomic.Bool
	hold := make(chan struct{})
	r := start(t, f.args(), func(s *kit.Service) error {
		s.Go("feed", func(ctx context.Context) error {
			select {
			case <-fail:
				return boom
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		s.Go("patient", func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond) // joined means waited for
			otherReturned.Store(true)
			return ctx.Err()
		})
		return nil
	})
	r.users.Hold = hold
	client := f.client(t, r.URL, "/client/reader")
	inFlight := make(chan error, 1)
	go func() {
		_, _, err := getUser(context.Background(), client)
		inFlight <- err
	}()
	rpctest.WaitFor(t, "a call in the handler", func() bool { return r.users.Calls() == 1 })

	close(fail)
	r.logs.WaitForLog(t, "level=ERROR", "background loop failed", "loop=feed", "the feed is gone")
	r.logs.WaitForLog(t, "draining")
	close(hold)
	if err := <-inFlight; err != nil {
		t.Fatalf("the call in flight when the loop failed: %v", err)
	}
	err := r.wait(t)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "feed") {
		t.Fatalf("Run returned %v, want the loop's error, named", err)
	}
	if !otherReturned.Load() {
		t.Fatal("Run returned before the other loop did")
	}
}

// TestLoopFailureDuringSetup: a loop that fails before the server serves
// stops the service: nothing is served and Run returns its error.
func TestLoopFailureDuringSetup(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	boom := errors.New("cannot start")
	r := launch(t, f.args(), func(s *kit.Service) error {
		s.Go("starter", func(context.Context) error { return boom })
		<-s.Context().Done() // the failure stops the service
		return nil
	})
	if err := r.wait(t); !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want the loop's error", err)
	}
	if r.svc.Server.Addr() != nil {
		t.Fatalf("the server listened on %s after a loop failed during setup", r.svc.Server.Addr())
	}
}

// TestSetupErrorStopsLoops: when setup fails, the loops it started are
// stopped and joined, nothing is served, Run returns setup's error, and
// the cleanups run after the loops.
func TestSetupErrorStopsLoops(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bad := errors.New("no database")
	var stopped, cleaned atomic.Bool
	r := launch(t, f.args(), func(s *kit.Service) error {
		s.Go("waiter", func(ctx context.Context) error {
			<-ctx.Done()
			stopped.Store(true)
			return ctx.Err()
		})
		s.Cleanup(func() error { cleaned.Store(stopped.Load()); return nil })
		return bad
	})
	if err := r.wait(t); !errors.Is(err, bad) {
		t.Fatalf("Run returned %v, want setup's error", err)
	}
	if !stopped.Load() || !cleaned.Load() {
		t.Fatalf("loop stopped %v, cleanup ran after it %v", stopped.Load(), cleaned.Load())
	}
}

// TestGoAfterStop: a loop started after Run returned is not run, and that
// is logged at ERROR rather than dropped in silence.
func TestGoAfterStop(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := start(t, f.args(), nil)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	var ran atomic.Bool
	r.svc.Go("late", func(context.Context) error { ran.Store(true); return nil })
	r.logs.WaitForLog(t, "level=ERROR", "started after the service stopped", "loop=late")
	time.Sleep(20 * time.Millisecond)
	if ran.Load() {
		t.Fatal("a loop started after Run returned ran")
	}
}

// TestCleanupsRunAfterTheDrain: cleanups run once the server has drained
// and stopped, last registered first, and a failing one is logged and
// returned.
func TestCleanupsRunAfterTheDrain(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var order []string
	var r *running
	stoppedFirst := true
	r = start(t, f.args(), func(s *kit.Service) error {
		s.Cleanup(func() error { order = append(order, "first"); return errors.New("close failed") })
		s.Cleanup(func() error {
			order = append(order, "second")
			stoppedFirst = r.logs.Count("msg=stopped") == 1
			return nil
		})
		return nil
	})
	err := r.stop(t)
	if err == nil || !strings.Contains(err.Error(), "close failed") {
		t.Fatalf("Run returned %v, want the cleanup's error", err)
	}
	if strings.Join(order, ",") != "second,first" || !stoppedFirst {
		t.Fatalf("cleanups ran %v; after the server stopped: %v", order, stoppedFirst)
	}
	r.logs.WaitForLog(t, "level=ERROR", "cleanup failed", "close failed")
}

// TestHealthz: the admin listener's /healthz answers 503 while setup runs
// (the server does not serve yet), 200 while serving, and 503 from the
// start of the drain while a call is still in flight; /metrics is served
// beside it.
func TestHealthz(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	release := make(chan struct{})
	r := launch(t, f.args("--admin-addr", "127.0.0.1:0"), func(s *kit.Service) error {
		<-release
		return nil
	})
	// The admin listener serves before setup returns.
	line := r.logs.WaitForLog(t, "admin listener serving")
	_, rest, ok := strings.Cut(line, " addr=")
	if !ok {
		t.Fatalf("no address in %q", line)
	}
	health := "http://" + strings.Fields(rest)[0] + "/healthz"
	if code := httpGet(t, health); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz during setup: %d, want 503", code)
	}
	close(release)
	r.waitServing(t)
	if code := httpGet(t, health); code != http.StatusOK {
		t.Fatalf("/healthz while serving: %d, want 200", code)
	}
	if code := httpGet(t, strings.TrimSuffix(health, "/healthz")+"/metrics"); code != http.StatusOK {
		t.Fatalf("/metrics: %d, want 200", code)
	}

	hold := make(chan struct{})
	r.users.Hold = hold
	inFlight := make(chan error, 1)
	go func() {
		_, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader"))
		inFlight <- err
	}()
	rpctest.WaitFor(t, "a call in the handler", func() bool { return r.users.Calls() == 1 })
	r.cancel()
	r.logs.WaitForLog(t, "draining")
	rpctest.WaitFor(t, "/healthz 503 while draining", func() bool { return httpGet(t, health) == http.StatusServiceUnavailable })
	select {
	case err := <-inFlight:
		t.Fatalf("the call ended before the probe: %v", err)
	default:
	}
	close(hold)
	if err := <-inFlight; err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t); err != nil {
		t.Fatal(err)
	}
}

// TestFlagErrors: flags that contradict each other stop Run before
// anything is built, with an error naming them.
func TestFlagErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cases := map[string]struct {
		args []string
		want string
	}{
		"socket and cert":          {f.args("--spiffe-socket", "unix:///nonexistent/agent.sock"), "--cert, --key, --ca cannot be used with it"},
		"socket and crl":           {[]string{"--spiffe-socket", "unix:///nonexistent/agent.sock", "--crl", "crl.pem"}, "--crl cannot be used with it"},
		"socket and reload":        {[]string{"--spiffe-socket", "unix:///nonexistent/agent.sock", "--cert-reload-interval", "1s"}, "--cert-reload-interval cannot be used"},
		"issuer without jwks":      {f.args("--token-issuer", "spiffe://palisade.local/svc/user"), "--token-issuer and --jwks-url go together"},
		"jwks without issuer":      {f.args("--jwks-url", "https://127.0.0.1:1/.well-known/jwks.json"), "--token-issuer and --jwks-url go together"},
		"audience alone":           {f.args("--token-audience", "spiffe://palisade.local/svc/kit"), "--token-audience needs"},
		"remote without admin":     {f.args("--admin-allow-remote"), "--admin-allow-remote needs --admin-addr"},
		"admin off loopback":       {f.args("--admin-addr", "192.0.2.1:0"), "binds a loopback address only"},
		"dir and bundle":           {f.args("--policy-dir", "d", "--policy-bundle", "b.tar.gz"), "exclusive"},
		"bad log level":            {f.args("--log-level", "loud"), "--log-level"},
		"stray argument":           {f.args("serve"), "unexpected arguments"},
		"unknown flag":             {f.args("--no-such-flag"), "flag provided but not defined"},
		"issuer not a SPIFFE ID":   {f.args("--token-issuer", "spiffe://Palisade.local/svc/user", "--jwks-url", "https://127.0.0.1:1/jwks"), "--token-issuer"},
		"missing certificate file": {[]string{"--cert", "/nonexistent/kit.pem"}, "palisade certs init"},
		"persist without a server": {f.args("--policy-bundle-persist-dir", "d"), "need --policy-bundle https://"},
		"signing key for a file":   {f.args("--policy-bundle", "b.tar.gz", "--policy-bundle-signing-key", "k.pem"), "need --policy-bundle https://"},
		"unreadable signing key":   {f.args("--policy-bundle", "https://127.0.0.1:1/b.tar.gz", "--policy-bundle-signing-key", "/nonexistent/k.pem"), "--policy-bundle-signing-key"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			called := false
			err := kit.Run(context.Background(), "kit", c.args, func(*kit.Service) error { called = true; return nil },
				kit.WithPolicy(testLayer()), kit.WithLogOutput(&syncWriter{w: &out}))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Run(%q): %v, want an error with %q", c.args, err, c.want)
			}
			if called {
				t.Fatal("setup was called")
			}
		})
	}
	// With remote access the admin listener tries the address (and fails
	// to bind it: no interface has 192.0.2.1).
	err := kit.Run(context.Background(), "kit", f.args("--admin-addr", "192.0.2.1:0", "--admin-allow-remote"),
		func(*kit.Service) error { return nil }, kit.WithPolicy(testLayer()), kit.WithLogOutput(&syncWriter{w: new(bytes.Buffer)}))
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("--admin-allow-remote: %v, want the bind tried", err)
	}
}

// TestHelp: --help prints the description and the flags, including the
// service's own, and Run returns nil without calling setup.
func TestHelp(t *testing.T) {
	t.Parallel()
	var out syncWriter
	out.w = new(bytes.Buffer)
	var db string
	err := kit.Run(context.Background(), "kit", []string{"--help"}, func(*kit.Service) error {
		t.Error("setup called for --help")
		return nil
	}, kit.WithLogOutput(&out), kit.WithDescription("kit serves tests."),
		kit.WithFlags(func(fs *flagSet) { fs.StringVar(&db, "db", "kit.db", "the `file`") }))
	if err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{"kit serves tests.", "Usage: kit [flags]", "-spiffe-socket socket", "-admin-allow-remote", "-token-issuer issuer", "-policy-data file", "-otlp-endpoint URL", "-decision-log-url URL", "-db file"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q:\n%s", want, help)
		}
	}
}

// TestOwnVerifierReplacesTokenFlags: with WithTokenVerifier the kit's token
// flags are not defined (the service may define its own of those names),
// and the verifier it returns decides: a token it accepts reaches the
// handler as the user.
func TestOwnVerifierReplacesTokenFlags(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var issuer string
	r := start(t, f.args("--token-issuer", "mine"), nil,
		kit.WithFlags(func(fs *flagSet) { fs.StringVar(&issuer, "token-issuer", "", "the service's own") }),
		kit.WithTokenVerifier(func(s *kit.Service) (rpcTokenVerifier, error) {
			if s.Server != nil || s.ID.String() != serviceID {
				t.Errorf("the verifier's constructor saw Server %v, ID %s", s.Server, s.ID)
			}
			return fixedVerifier{subject: "alice"}, nil
		}))
	if issuer != "mine" {
		t.Fatalf("the service's --token-issuer is %q", issuer)
	}
	u, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader", withToken("anything")))
	if err != nil || u.GetEmail() != "alice" {
		t.Fatalf("GetUser with a token the verifier accepts: %v %v", u, err)
	}
	_, code, _ := getUser(context.Background(), f.client(t, r.URL, "/client/reader", withToken("refuse")))
	if code != connect.CodeUnauthenticated {
		t.Fatalf("GetUser with a token the verifier refuses: %v, want unauthenticated", code)
	}
}

// TestSpiffeSocket: with --spiffe-socket the service takes its certificate
// and trust bundle from the Workload API — no certificate file exists —,
// its ID is the SVID's, and it serves a client of the bundle's CA that
// checks it by that ID. The Workload API connection is closed when Run
// returns (TestMain's leak check fails otherwise).
func TestSpiffeSocket(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	agent := fakeagent.Start(t)
	agent.Push(fakeagent.SVID(t, ca.Server("/svc/kit"), ca.Cert))
	r := start(t, []string{"--addr", "127.0.0.1:0", "--spiffe-socket", agent.Addr, "--log-format", "text"}, nil)
	if r.svc.ID.String() != serviceID {
		t.Fatalf("Service.ID %s, want the SVID's %s", r.svc.ID, serviceID)
	}
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, r.URL, ca.Source(ca.Client("/client/reader")), rpc.WithServerID(serviceID))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := getUser(context.Background(), c); err != nil {
		t.Fatalf("GetUser of a service with its SVID from the Workload API: %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyData: --policy-data lays a data document over the layer's
// data, its values replacing the layer's at the same path: the readers it
// lists may call GetUser, and the layer's reader no longer may. The base
// policy's trust domain is the service's own unless the document says
// otherwise. A file that is not one JSON object stops Run, naming the
// flag; so does a service without a policy layer.
func TestPolicyData(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data.json")
	const otherID = "spiffe://palisade.local/client/other"
	if err := os.WriteFile(data, []byte(`{"kittest": {"readers": ["`+otherID+`"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := start(t, f.args("--policy-data", data), nil)
	if _, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/other")); err != nil {
		t.Fatalf("GetUser of a reader listed by --policy-data: %v", err)
	}
	if _, code, _ := getUser(context.Background(), f.client(t, r.URL, "/client/reader")); code != connect.CodePermissionDenied {
		t.Fatalf("GetUser of the layer's reader, replaced by --policy-data: %v, want permission_denied", code)
	}
	if code := healthCheck(t, f, r.URL); code != 0 {
		t.Fatalf("Health/Check of a workload of the service's trust domain: %v", code)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	// Another trust domain, from the data: the base admits none of ours.
	other := filepath.Join(dir, "other.json")
	if err := os.WriteFile(other, []byte(`{"palisade": {"config": {"trust_domain": "example.org"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = start(t, f.args("--policy-data", other), nil)
	if code := healthCheck(t, f, r.URL); code != connect.CodePermissionDenied {
		t.Fatalf("Health/Check with the policy's trust domain example.org: %v, want permission_denied", code)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	err := kit.Run(context.Background(), "kit", f.args(), func(*kit.Service) error {
		t.Error("setup called without a policy layer")
		return nil
	}, kit.WithLogOutput(&syncWriter{w: new(bytes.Buffer)}))
	if err == nil || !strings.Contains(err.Error(), "no policy layer") {
		t.Errorf("Run without a policy layer: %v", err)
	}

	for name, content := range map[string]string{"not JSON": "readers: all", "an array": `["x"]`, "two objects": `{} {}`} {
		bad := filepath.Join(dir, "bad.json")
		if err := os.WriteFile(bad, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		err := kit.Run(context.Background(), "kit", f.args("--policy-data", bad), func(*kit.Service) error {
			t.Errorf("%s: setup called", name)
			return nil
		}, kit.WithPolicy(testLayer()), kit.WithLogOutput(&syncWriter{w: new(bytes.Buffer)}))
		if err == nil || !strings.Contains(err.Error(), "--policy-data") {
			t.Errorf("%s: Run returned %v, want an error naming --policy-data", name, err)
		}
	}
}

// TestTokenIssuerFlags: with --token-issuer and --jwks-url the kit verifies
// bearer tokens with the issuer's keys, fetched over mTLS from a server
// that must present the issuer's SPIFFE ID, for the audience of the
// service's own SPIFFE ID. A token of the issuer for the service reaches
// the handler as its user; one for another audience, or signed by a key
// the JWKS does not list, is refused with unauthenticated; and keys served
// by a workload that is not the issuer are never used.
func TestTokenIssuerFlags(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const issuerID = "spiffe://palisade.local/svc/user"
	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	jwks := &token.JWKSHandler{}
	if err := jwks.Set(pubs); err != nil {
		t.Fatal(err)
	}
	none, err := authz.NewAllowList(nil)
	if err != nil {
		t.Fatal(err)
	}
	serveJWKS := func(s *rpc.Server) error { return s.HandleHTTP(token.JWKSPath, jwks) }
	issuerSrv := rpctest.Start(t, f.ca.Source(f.ca.Server("/svc/user")), none, serveJWKS)
	impostor := rpctest.Start(t, f.ca.Source(f.ca.Server("/svc/other")), none, serveJWKS)

	issuer, err := token.NewIssuer(ks, issuerID, token.WithAudience(serviceID))
	if err != nil {
		t.Fatal(err)
	}
	issue := func(g token.Grant) string {
		raw, _, err := issuer.Issue(g)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	good := issue(token.Grant{Subject: "alice"})
	otherAudience := issue(token.Grant{Subject: "alice", Audience: []string{"spiffe://palisade.local/svc/order"}})
	otherKeys, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	forger, err := token.NewIssuer(otherKeys, issuerID, token.WithAudience(serviceID))
	if err != nil {
		t.Fatal(err)
	}
	forged, _, err := forger.Issue(token.Grant{Subject: "alice"})
	if err != nil {
		t.Fatal(err)
	}

	r := start(t, f.args("--token-issuer", issuerID, "--jwks-url", issuerSrv.URL+token.JWKSPath), nil)
	r.logs.WaitForLog(t, "verifying bearer tokens", "audience="+serviceID)
	u, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader", withToken(good)))
	if err != nil || u.GetEmail() != "alice" {
		t.Fatalf("GetUser with the issuer's token for this service: %v %v", u, err)
	}
	for name, raw := range map[string]string{"another audience": otherAudience, "another key": forged} {
		if _, code, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader", withToken(raw))); code != connect.CodeUnauthenticated {
			t.Errorf("GetUser with a token of %s: %v, want unauthenticated", name, err)
		}
	}

	// The same keys, served by a workload that is not the issuer.
	r = start(t, f.args("--token-issuer", issuerID, "--jwks-url", impostor.URL+token.JWKSPath), nil)
	if _, code, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader", withToken(good))); code != connect.CodeUnauthenticated {
		t.Fatalf("GetUser with keys from a workload that is not the issuer: %v, want unauthenticated", err)
	}
}

// TestDecisionLogURL: with --decision-log-url every decision of the
// service goes to the sink, over mutual TLS with the service's
// certificate, labelled with the service's name; the ones still buffered
// when the service stops are sent before Run returns.
func TestDecisionLogURL(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	type event struct {
		Labels      map[string]string `json:"labels"`
		Result      map[string]any    `json:"result"`
		RequestedBy string            `json:"requested_by"`
	}
	var (
		mu     sync.Mutex
		events []event
		peers  []string
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := &http.Server{
		TLSConfig:         mtls.ServerConfig(f.ca.Source(f.ca.Server("/svc/logs")), "h2"),
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			var batch []event
			if err := json.NewDecoder(zr).Decode(&batch); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			events = append(events, batch...)
			peers = append(peers, r.TLS.PeerCertificates[0].URIs[0].String())
		}),
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = sink.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = sink.Close(); <-served })

	r := start(t, f.args("--decision-log-url", "https://"+ln.Addr().String()+"/logs"), nil)
	if _, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader")); err != nil {
		t.Fatal(err)
	}
	if _, code, _ := getUser(context.Background(), f.client(t, r.URL, "/client/other")); code != connect.CodePermissionDenied {
		t.Fatalf("GetUser of a workload that is not a reader: %v", code)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var allowed, denied int
	for _, ev := range events {
		if ev.Labels["service"] != "kit" || ev.RequestedBy != serviceID {
			t.Errorf("event labelled %v, requested by %q", ev.Labels, ev.RequestedBy)
		}
		switch ev.Result["allow"] {
		case true:
			allowed++
		case false:
			denied++
		}
	}
	if allowed != 1 || denied != 1 {
		t.Fatalf("the sink received %d allowed and %d denied decisions (%d events), want 1 and 1", allowed, denied, len(events))
	}
	for _, p := range peers {
		if p != serviceID {
			t.Fatalf("decisions sent with the certificate of %s", p)
		}
	}
}

// healthCheck calls Health/Check of the service at url as /client/reader
// and returns the error's code (0 for success).
func healthCheck(t *testing.T, f *fixture, url string) connect.Code {
	t.Helper()
	hc, err := rpc.NewHTTPClient(f.ca.Source(f.ca.Client("/client/reader")))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	health := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](hc, url+rpc.HealthCheckProcedure, connect.WithGRPC())
	if _, err = health.CallUnary(context.Background(), connect.NewRequest(&healthpb.HealthCheckRequest{})); err != nil {
		return connect.CodeOf(err)
	}
	return 0
}

// TestPolicyAllowUntested: a --policy-dir layer without rego tests stops
// the service at start, saying how to proceed; with
// --policy-allow-untested it serves, and says it is unsafe.
func TestPolicyAllowUntested(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte("package palisade.authz\n\nallow if input.procedure == \"/user.v1.UserService/GetUser\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := kit.Run(context.Background(), "kit", f.args("--policy-dir", dir), func(*kit.Service) error {
		t.Error("setup called with an untested layer")
		return nil
	}, kit.WithPolicy(testLayer()), kit.WithLogOutput(&syncWriter{w: new(bytes.Buffer)}))
	if !errors.Is(err, policy.ErrUntested) || !strings.Contains(err.Error(), "--policy-allow-untested") {
		t.Fatalf("Run with an untested --policy-dir: %v, want policy.ErrUntested and the way out", err)
	}
	r := start(t, f.args("--policy-dir", dir, "--policy-allow-untested"), nil)
	r.logs.WaitForLog(t, "level=WARN", "untested")
	if _, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/other")); err != nil {
		t.Fatalf("GetUser under the --policy-dir layer, which allows everyone: %v", err)
	}
}

// TestDecisionLogInput: with --decision-log-input the local decision log
// line carries the input the policy decided on, request included, so that
// `palisade policy eval --input` can replay it; without it, no input.
func TestDecisionLogInput(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, withInput := range []bool{false, true} {
		args := f.args("--log-format", "json")
		if withInput {
			args = f.args("--log-format", "json", "--decision-log-input")
		}
		r := start(t, args, nil)
		if _, _, err := getUser(context.Background(), f.client(t, r.URL, "/client/reader")); err != nil {
			t.Fatal(err)
		}
		line := r.logs.WaitForLog(t, `"msg":"decision"`, `"procedure":"/user.v1.UserService/GetUser"`)
		has := strings.Contains(line, `"input":{`) && strings.Contains(line, `"request":{"id":"alice"}`)
		if has != withInput {
			t.Errorf("--decision-log-input %v: decision line %s", withInput, line)
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}
