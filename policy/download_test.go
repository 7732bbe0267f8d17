package policy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// bundleKey signs test bundles (ECDSA P-256, ES256).
type bundleKey struct {
	id              string
	private, public []byte // PEM
}

func newBundleKey(t *testing.T, id string) *bundleKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &bundleKey{
		id:      id,
		private: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}),
		public:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
	}
}

// opaBundle writes an OPA bundle as `opa build` does: files, a manifest
// naming revision, and, with key, a .signatures.json signing every file.
// tamper, if set, changes the bundle after it was signed.
func opaBundle(t *testing.T, revision string, files map[string]string, key *bundleKey, tamper func(*opabundle.Bundle)) []byte {
	t.Helper()
	b := opabundle.Bundle{Manifest: opabundle.Manifest{Revision: revision}, Data: map[string]any{}}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b.Modules = append(b.Modules, opabundle.ModuleFile{URL: "/" + name, Path: "/" + name, Raw: []byte(files[name])})
	}
	if key != nil {
		if err := b.GenerateSignature(opabundle.NewSigningConfig(string(key.private), "ES256", ""), key.id, false); err != nil {
			t.Fatal(err)
		}
	}
	if tamper != nil {
		tamper(&b)
	}
	var buf bytes.Buffer
	if err := opabundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bundleServer is an OPA bundle server over mTLS on 127.0.0.1: it serves
// one archive with an ETag, answers a matching If-None-Match with 304, and
// with longPoll holds such a poll until the archive changes or the wait
// the client asked for ("Prefer: wait=N") passes, as OPA's protocol has it.
type bundleServer struct {
	url      string
	longPoll bool
	noETags  bool // answer every poll with the archive

	mu      sync.Mutex
	archive []byte
	etag    string
	changed chan struct{} // closed when the archive changes
	status  int           // when set, every request gets it

	full, notModified, failed atomic.Int64
	held                      chan struct{} // a long poll is being held
	prefer                    atomic.Value  // the last Prefer header
	clients                   sync.Map      // SPIFFE IDs of the clients seen
}

func startBundleServer(t *testing.T, ca *certstest.CA, configure func(*bundleServer)) *bundleServer {
	t.Helper()
	s := &bundleServer{changed: make(chan struct{}), held: make(chan struct{}, 1)}
	if configure != nil {
		configure(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{TLSConfig: mtls.ServerConfig(ca.Source(ca.Server("/svc/bundles")), "h2"), Handler: s,
		ErrorLog: log.New(io.Discard, "", 0)} // refused handshakes are what some tests are about
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = hs.Close() })
	s.url = "https://" + ln.Addr().String() + "/bundles/authz.tar.gz"
	return s
}

// publish makes archive the bundle served, with a new ETag.
func (s *bundleServer) publish(archive []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := sha256.Sum256(archive)
	s.archive, s.etag = archive, `"`+hex.EncodeToString(sum[:8])+`"`
	close(s.changed)
	s.changed = make(chan struct{})
}

// fail makes every request get status (0: serve again).
func (s *bundleServer) fail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

func (s *bundleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id, err := spiffeid.FromCertificate(r.TLS.PeerCertificates[0]); err == nil {
		s.clients.Store(id.String(), true)
	}
	s.prefer.Store(r.Header.Get("Prefer"))
	s.mu.Lock()
	if s.status != 0 {
		s.mu.Unlock()
		s.failed.Add(1)
		w.WriteHeader(s.status)
		return
	}
	if match := r.Header.Get("If-None-Match"); !s.noETags && match != "" && match == s.etag {
		changed := s.changed
		s.mu.Unlock()
		if wait := preferWait(r.Header.Get("Prefer")); s.longPoll && wait > 0 {
			select {
			case s.held <- struct{}{}:
			default:
			}
			select {
			case <-changed:
			case <-time.After(wait):
			case <-r.Context().Done():
				return
			}
		}
		s.mu.Lock()
		if match == s.etag {
			s.mu.Unlock()
			s.notModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	archive, etag := s.archive, s.etag
	s.mu.Unlock()
	if s.longPoll {
		w.Header().Set("Content-Type", "application/vnd.openpolicyagent.bundles")
	} else {
		w.Header().Set("Content-Type", "application/gzip")
	}
	if !s.noETags {
		w.Header().Set("ETag", etag)
	}
	s.full.Add(1)
	_, _ = w.Write(archive)
}

func preferWait(prefer string) time.Duration {
	for _, f := range strings.Split(prefer, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(f), "wait="); ok {
			n, _ := strconv.Atoi(v)
			return time.Duration(n) * time.Second
		}
	}
	return 0
}

// outcomes records what each update of a BundleSource came to.
type outcomes struct {
	mu     sync.Mutex
	list   []string
	notify chan struct{}
}

func observe(src *policy.BundleSource) *outcomes {
	o := &outcomes{notify: make(chan struct{}, 1)}
	src.Observe(func(outcome string) {
		o.mu.Lock()
		o.list = append(o.list, outcome)
		o.mu.Unlock()
		select {
		case o.notify <- struct{}{}:
		default:
		}
	})
	return o
}

// mark returns the number of outcomes so far, for waitFor.
func (o *outcomes) mark() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.list)
}

// count returns how many of the outcomes after from are want.
func (o *outcomes) count(from int, want string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, got := range o.list[from:] {
		if got == want {
			n++
		}
	}
	return n
}

// waitFor waits until n outcomes after from are want, and returns the
// mark after the n-th; it fails the test after 30 seconds.
func (o *outcomes) waitFor(t *testing.T, from int, want string, n int) int {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		o.mu.Lock()
		seen := 0
		for i, got := range o.list[from:] {
			if got == want {
				if seen++; seen == n {
					o.mu.Unlock()
					return from + i + 1
				}
			}
		}
		list := slices.Clone(o.list[from:])
		o.mu.Unlock()
		select {
		case <-o.notify:
		case <-deadline:
			t.Fatalf("timed out waiting for %d %q updates; got %q", n, want, list)
		}
	}
}

// bundleClient is the mTLS client of the service fetching bundles (its own
// certificate, spiffe://palisade.local/svc/order).
func bundleClient(t *testing.T, ca *certstest.CA) *http.Client {
	t.Helper()
	client, err := rpc.NewHTTPClient(ca.Source(ca.Server("/svc/order")))
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// runSource runs src until stop is called or the test ends, and checks
// that Run stops.
func runSource(t *testing.T, src *policy.BundleSource) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v, want context.Canceled", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return after its context was canceled")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func decides(t *testing.T, e *policy.Engine, input string) bool {
	t.Helper()
	d, err := e.Eval(context.Background(), ast.MustParseTerm(input).Value)
	if err != nil {
		t.Fatal(err)
	}
	return d.Allow
}

// TestBundleServerETags polls a bundle server over mTLS without delay
// between polls: while the bundle does not change, every poll is answered
// 304 and nothing is compiled or tested; a new bundle is fetched once,
// tested once and swapped in. A server that ignores ETags costs a full
// download per poll, but an unchanged bundle is still not tested again.
func TestBundleServerETags(t *testing.T) {
	t.Parallel()
	for name, noETags := range map[string]bool{"etags": false, "no etags": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ca := certstest.NewCA(t)
			srv := startBundleServer(t, ca, func(s *bundleServer) { s.noETags = noETags })
			srv.publish(opaBundle(t, "v1", versionFiles("v1", true, "[]", "true"), nil, nil))
			logger, logs := rpctest.NewLogger(t)
			src, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), policy.WithLogger(logger), policy.WithTestPollingDelay(0, 0))
			if err != nil {
				t.Fatal(err)
			}
			seen := observe(src)
			e, err := src.NewEngine(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			runSource(t, src)

			const polls = 100
			mark := seen.waitFor(t, 0, "not modified", polls)
			srv.publish(opaBundle(t, "v2", versionFiles("v2", false, `["v2"]`, "false"), nil, nil))
			mark = seen.waitFor(t, mark, "loaded", 1)
			seen.waitFor(t, mark, "not modified", polls)
			full, notModified := srv.full.Load(), srv.notModified.Load()
			t.Logf("bundle polls answered 200: %d, 304: %d; versions tested: %d", full, notModified, src.Gates())

			if decides(t, e, `{}`) {
				t.Fatal("v2 (deny) is not in force")
			}
			if n := src.Gates(); n != 2 {
				t.Errorf("%d versions tested, want 2 (v1 at start, v2 once): an unchanged bundle must not be compiled again", n)
			}
			if noETags {
				if notModified != 0 || full < 2*polls {
					t.Errorf("200: %d, 304: %d, want no 304 from a server without ETags", full, notModified)
				}
			} else if full != 2 || notModified < 2*polls {
				t.Errorf("200: %d, 304: %d; want 2 full downloads (v1, v2) and every other poll 304", full, notModified)
			}
			if _, ok := srv.clients.Load("spiffe://palisade.local/svc/order"); !ok {
				t.Error("the bundle server did not see the service's own certificate")
			}
			if p, _ := srv.prefer.Load().(string); !strings.Contains(p, "modes=snapshot") || strings.Contains(p, "delta") {
				t.Errorf("Prefer: %q; want snapshot bundles only", p)
			}
			if n := logs.Count("level=ERROR") + logs.Count("level=WARN"); n != 0 {
				t.Errorf("%d errors or warnings logged", n)
			}
		})
	}
}

// TestBundleLongPolling: with WithLongPolling, a poll is held by the server
// and a bundle published meanwhile arrives at once — the polling delay
// (60 s at least, OPA's default) would otherwise hold it back.
func TestBundleLongPolling(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	srv := startBundleServer(t, ca, func(s *bundleServer) { s.longPoll = true })
	srv.publish(opaBundle(t, "v1", versionFiles("v1", true, "[]", "true"), nil, nil))
	logger, _ := rpctest.NewLogger(t)
	src, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), policy.WithLogger(logger), policy.WithLongPolling(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	seen := observe(src)
	e, err := src.NewEngine(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, src)
	select {
	case <-srv.held:
	case <-time.After(30 * time.Second):
		t.Fatal("no poll held by the server")
	}
	if p, _ := srv.prefer.Load().(string); !strings.Contains(p, "wait=30") {
		t.Fatalf("Prefer: %q; want wait=30", p)
	}
	start := time.Now()
	srv.publish(opaBundle(t, "v2", versionFiles("v2", false, `["v2"]`, "false"), nil, nil))
	seen.waitFor(t, 0, "loaded", 1)
	t.Logf("v2 in force %s after it was published; 200: %d, 304: %d", time.Since(start).Round(time.Millisecond), srv.full.Load(), srv.notModified.Load())
	if decides(t, e, `{}`) {
		t.Fatal("v2 (deny) is not in force")
	}
	if n := srv.full.Load(); n != 2 {
		t.Errorf("%d full downloads, want 2", n)
	}
}

var discard = slog.New(slog.DiscardHandler)

// bomb returns a bundle archive of n files of size zero bytes each: a few
// kilobytes that unpack to n*size.
func bomb(t *testing.T, n, size int) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(gz)
	zeros := make([]byte, size)
	for i := range n {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("pad%d.rego", i), Mode: 0o600, Size: int64(size), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(zeros); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRefusedBundleRetried: a bundle the gate refuses (a test fails) is
// logged and not tried again while the server keeps answering 304 — until
// the retry delay has passed on the source's clock (1 s, then 2 s): then it
// is fetched and tried again, while the last good policy keeps deciding. A
// fixed bundle is taken at once.
func TestRefusedBundleRetried(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	srv := startBundleServer(t, ca, nil)
	srv.publish(opaBundle(t, "v1", versionFiles("v1", true, "[]", "true"), nil, nil))
	logger, logs := rpctest.NewLogger(t)
	src, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), policy.WithLogger(logger), policy.WithTestPollingDelay(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	var now atomic.Pointer[time.Time]
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	now.Store(&start)
	src.SetClock(func() time.Time { return *now.Load() })
	advance := func(d time.Duration) {
		next := now.Load().Add(d)
		now.Store(&next)
	}
	seen := observe(src)
	e, err := src.NewEngine(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	good := e.Revision()
	runSource(t, src)

	failing := opaBundle(t, "v2", versionFiles("v2", false, "[]", "true"), nil, nil) // its test wants allow
	srv.publish(failing)
	mark := seen.waitFor(t, 0, "refused", 1)
	mark = seen.waitFor(t, mark, "not modified", 50)
	if n := src.Gates(); n != 2 {
		t.Fatalf("%d versions tested, want 2: the refused one once, until its retry is due", n)
	}
	logs.WaitForLog(t, "level=ERROR", "policy refused", "retry_in=1s", "1 of 1 rego tests failed")

	advance(time.Second)
	mark = seen.waitFor(t, mark, "refused", 1)
	mark = seen.waitFor(t, mark, "not modified", 50)
	if n := src.Gates(); n != 3 {
		t.Fatalf("%d versions tested, want 3: the refused one again once its retry was due", n)
	}
	logs.WaitForLog(t, "level=WARN", "policy refused again", "retry_in=2s", "refusals=2")
	advance(time.Second)
	mark = seen.waitFor(t, mark, "not modified", 50)
	if n := src.Gates(); n != 3 || e.Revision() != good {
		t.Fatalf("%d versions tested, revision %s: the second retry is due after 2 s, not 1 s", n, e.Revision())
	}

	srv.publish(opaBundle(t, "v3", versionFiles("v3", false, "[]", "false"), nil, nil))
	seen.waitFor(t, mark, "loaded", 1)
	if decides(t, e, `{}`) {
		t.Fatal("v3 (deny) not in force")
	}
	if full := srv.full.Load(); full != 4 {
		t.Errorf("%d full downloads, want 4: v1, v2, v2 again on its retry, v3", full)
	}
	t.Logf("bundle polls answered 200: %d, 304: %d; versions tested: %d", srv.full.Load(), srv.notModified.Load(), src.Gates())
}

// TestBundleTooLarge: a bundle over 8 MiB, packed or unpacked, is refused
// before OPA reads it; a gzip bomb unpacking to 64 MiB (in files of 8 MiB,
// each under OPA's own per-file limit) costs the fetch far less memory than
// it unpacks to. Not parallel: it measures the process's allocations.
func TestBundleTooLarge(t *testing.T) {
	ca := certstest.NewCA(t)
	random := make([]byte, 9<<20)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		archive  []byte
		want     string
		maxAlloc uint64
	}{
		"64 MiB unpacked": {archive: bomb(t, 8, 8<<20), want: "larger than 8388608 bytes unpacked", maxAlloc: 16 << 20},
		"9 MiB packed":    {archive: random, want: "larger than 8388608 bytes", maxAlloc: 48 << 20},
	} {
		t.Run(name, func(t *testing.T) {
			srv := startBundleServer(t, ca, nil)
			srv.publish(c.archive)
			src, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), policy.WithLogger(discard))
			if err != nil {
				t.Fatal(err)
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = src.NewEngine(context.Background())
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes served: %v; allocated %.1f MiB meanwhile", len(c.archive), err, float64(alloc)/(1<<20))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want an error saying %q", err, c.want)
			}
			if alloc > c.maxAlloc {
				t.Fatalf("allocated %d MiB fetching it, want under %d MiB", alloc>>20, c.maxAlloc>>20)
			}
		})
	}
}

// TestBundleSourceConfigErrors: a source that cannot work is refused when
// it is made.
func TestBundleSourceConfigErrors(t *testing.T) {
	t.Parallel()
	client := &http.Client{}
	for name, c := range map[string]struct {
		url    string
		client *http.Client
		opts   []policy.BundleOption
		want   string
	}{
		"plain http":         {url: "http://127.0.0.1/b.tar.gz", client: client, want: "want https://host/path"},
		"a file path":        {url: "/var/lib/bundle.tar.gz", client: client, want: "want https://host/path"},
		"user in the URL":    {url: "https://u:secret@127.0.0.1/b.tar.gz", client: client, want: "want https://host/path"},
		"no client":          {url: "https://127.0.0.1/b.tar.gz", want: "needs an http.Client"},
		"poll under 1s":      {url: "https://127.0.0.1/b.tar.gz", client: client, opts: []policy.BundleOption{policy.WithPollingDelay(time.Millisecond, time.Second)}, want: "want 1s <= min <= max"},
		"max under min":      {url: "https://127.0.0.1/b.tar.gz", client: client, opts: []policy.BundleOption{policy.WithPollingDelay(time.Minute, time.Second)}, want: "want 1s <= min <= max"},
		"long poll under 1s": {url: "https://127.0.0.1/b.tar.gz", client: client, opts: []policy.BundleOption{policy.WithLongPolling(time.Millisecond)}, want: "at least 1s"},
		"client timeout":     {url: "https://127.0.0.1/b.tar.gz", client: &http.Client{Timeout: time.Minute}, opts: []policy.BundleOption{policy.WithLongPolling(time.Minute)}, want: "does not exceed the long-polling timeout"},
		"empty persist dir":  {url: "https://127.0.0.1/b.tar.gz", client: client, opts: []policy.BundleOption{policy.WithPersistDir("")}, want: "persist directory is empty"},
	} {
		_, err := policy.NewBundleSource(c.url, c.client, c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error shows the URL's password: %v", name, err)
		}
	}
	src, err := policy.NewBundleSource("https://127.0.0.1/b.tar.gz", client)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(context.Background()); err == nil {
		t.Error("Run before NewEngine: no error")
	}
}
