package policy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/internal/testusers"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// policyVersion is one version of a policy directory.
type policyVersion struct {
	name  string
	files map[string]string
	allow bool // what every decision of this version says; unused for refused versions
}

// versionFiles is a layer that allows every call or none, denying with
// reason (a rego array), and its test.
func versionFiles(name string, allow bool, reason, testWants string) map[string]string {
	return map[string]string{
		"authz.rego": fmt.Sprintf(`# version %s
package palisade.authz
allow if %v
deny_reasons contains r if some r in %s
`, name, allow, reason),
		"authz_test.rego": `package palisade.authz_test
test_decision if data.palisade.authz.decision.allow == ` + testWants + `
`,
	}
}

// swapDir points link at a new directory holding files, atomically (a
// symlink renamed over the old one), so a watcher never sees half a version.
func swapDir(t *testing.T, root, link, name string, files map[string]string) {
	t.Helper()
	dir := filepath.Join(root, name)
	writeDir(t, dir, files)
	if err := relink(dir, link); err != nil {
		t.Fatal(err)
	}
}

// writeDir creates dir holding files.
func writeDir(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for f, src := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// relink points the symlink link at target atomically: a new link renamed
// over the old one.
func relink(target, link string) error {
	if err := os.Symlink(target, link+".tmp"); err != nil {
		return err
	}
	return os.Rename(link+".tmp", link)
}

// TestReloadUnderTraffic swaps policies while calls run: a new policy, a
// broken one, one whose tests fail, another new one. No call may fail for
// any reason but the decision of the policy in force, every logged decision
// must be what its policy says, and the refused versions must never decide.
func TestReloadUnderTraffic(t *testing.T) {
	t.Parallel()
	versions := []policyVersion{
		{name: "v1", files: versionFiles("v1", true, "[]", "true"), allow: true},
		{name: "v2", files: versionFiles("v2", false, `["v2 denies everything"]`, "false"), allow: false},
		{name: "broken", files: map[string]string{"authz.rego": "package palisade.authz\ndecision := {"}},
		{name: "failing", files: versionFiles("failing", true, "[]", "false")},
		{name: "v3", files: versionFiles("v3", true, "[]", "true"), allow: true},
	}
	root := t.TempDir()
	link := filepath.Join(root, "current")
	swapDir(t, root, link, versions[0].name, versions[0].files)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	engineLog := &lineLog{}
	load := policy.DirLoader(link)
	b, err := load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(ctx, b, policy.WithLogger(slog.New(slog.NewTextHandler(engineLog, nil))))
	if err != nil {
		t.Fatal(err)
	}
	watchDone := make(chan error, 1)
	go func() { watchDone <- engine.Watch(ctx, load, 5*time.Millisecond) }()

	ca := certstest.NewCA(t)
	users := &testusers.Service{}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), engine, users.Mount)
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}

	var calls, allowed, denied atomic.Int64
	var unexpected sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
				calls.Add(1)
				switch {
				case err == nil:
					allowed.Add(1)
				case connect.CodeOf(err) == connect.CodePermissionDenied && strings.Contains(err.Error(), "v2 denies everything"):
					denied.Add(1)
				default:
					unexpected.Store(err.Error(), true)
				}
			}
		}()
	}
	waitCalls := func(n int64) {
		target := calls.Load() + n
		for calls.Load() < target {
			time.Sleep(time.Millisecond)
		}
	}

	revisions := map[string]policyVersion{}
	waitCalls(50)
	for _, v := range versions[1:] {
		swapDir(t, root, link, v.name, v.files)
		rev := (&policy.Bundle{Modules: v.files}).Revision()
		revisions[rev] = v
		if v.name == "broken" || v.name == "failing" {
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(engineLog.String(), "revision="+rev) {
				if time.Now().After(deadline) {
					t.Fatalf("%s was never tried", v.name)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if engine.Revision() == rev {
				t.Fatalf("%s was swapped in", v.name)
			}
		} else {
			deadline := time.Now().Add(10 * time.Second)
			for engine.Revision() != rev {
				if time.Now().After(deadline) {
					t.Fatalf("%s was not swapped in; engine log:\n%s", v.name, engineLog.String())
				}
				time.Sleep(time.Millisecond)
			}
		}
		waitCalls(50)
	}
	close(stop)
	wg.Wait()
	cancel()
	if err := <-watchDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v", err)
	}

	unexpected.Range(func(k, _ any) bool {
		t.Errorf("a call failed for a reason other than the policy: %v", k)
		return true
	})
	if allowed.Load() == 0 || denied.Load() == 0 {
		t.Fatalf("allowed %d, denied %d: both versions should have decided", allowed.Load(), denied.Load())
	}
	// Every decision logged matches its policy; no refused version decided.
	revisions[(&policy.Bundle{Modules: versions[0].files}).Revision()] = versions[0]
	re := regexp.MustCompile(`msg=decision .* allow=(true|false) .*policy_revision=([0-9a-f]+)`)
	seen := map[string]int{}
	for _, line := range srv.Lines() {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, ok := revisions[m[2]]
		if !ok {
			t.Fatalf("decision by an unknown revision: %s", line)
		}
		if v.name == "broken" || v.name == "failing" {
			t.Fatalf("a refused policy decided: %s", line)
		}
		if (m[1] == "true") != v.allow {
			t.Fatalf("decision disagrees with %s: %s", v.name, line)
		}
		seen[v.name]++
	}
	for _, name := range []string{"v1", "v2", "v3"} {
		if seen[name] == 0 {
			t.Errorf("no decision by %s", name)
		}
	}
	t.Logf("%d calls: %d allowed, %d denied; decisions per version %v", calls.Load(), allowed.Load(), denied.Load(), seen)
}

// lineLog is a concurrency-safe log sink.
type lineLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestWatchTriesOnlySettledChanges feeds Watch a version read once, as when
// files are caught being copied into the policy directory, then a version
// that stays: only the one that stays may be tried.
func TestWatchTriesOnlySettledChanges(t *testing.T) {
	t.Parallel()
	bundle := func(name string) *policy.Bundle {
		return &policy.Bundle{Modules: versionFiles(name, true, "[]", "true"), Origin: name}
	}
	initial, passing, next := bundle("initial"), bundle("caught mid-copy"), bundle("next")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	engineLog := &lineLog{}
	engine, err := policy.NewEngine(ctx, initial, policy.WithLogger(slog.New(slog.NewTextHandler(engineLog, nil))))
	if err != nil {
		t.Fatal(err)
	}
	var loads atomic.Int64
	load := func(context.Context) (*policy.Bundle, error) {
		if loads.Add(1) == 1 {
			return passing, nil
		}
		return next, nil
	}
	done := make(chan error, 1)
	go func() { done <- engine.Watch(ctx, load, time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for engine.Revision() != next.Revision() {
		if time.Now().After(deadline) {
			t.Fatalf("the settled version was not swapped in; engine log:\n%s", engineLog.String())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if log := engineLog.String(); strings.Contains(log, passing.Revision()) {
		t.Fatalf("a version read only once was tried:\n%s", log)
	}
	if n := loads.Load(); n < 3 {
		t.Fatalf("swapped in after %d loads; a change must be read twice after the first one", n)
	}
}

// alicePolicy is a layer that lets a caller read alice's record only, and
// its tests say so.
var alicePolicy = map[string]string{
	"authz.rego": `package palisade.authz
allow if input.request.id == "alice"
deny_reasons contains "only alice's record" if not allow
`,
	"authz_test.rego": `package palisade.authz_test
import data.palisade.authz
test_alice if authz.decision.allow with input as {"request": {"id": "alice"}}
test_not_bob if not authz.decision.allow with input as {"request": {"id": "bob"}}
`,
}

// untested is alicePolicy with its tests deleted and bob's record opened
// (issue 13's reproduction), marked so that each call makes a new version.
func untested(mark string) map[string]string {
	return map[string]string{"authz.rego": alicePolicy["authz.rego"] + `allow if input.request.id == "bob"
# ` + mark + "\n"}
}

// policySource is a watched source of policy versions, a directory or a
// bundle file.
type policySource struct {
	load policy.Loader
	// publish makes files the source's next version, atomically.
	publish func(t *testing.T, files map[string]string)
}

// policySources returns a directory source (a symlink renamed over) and a
// bundle file source (a tar.gz renamed over), each in its own temporary
// directory.
func policySources(t *testing.T) map[string]policySource {
	dir := func(t *testing.T) policySource {
		root := t.TempDir()
		link := filepath.Join(root, "current")
		n := 0
		return policySource{load: policy.DirLoader(link), publish: func(t *testing.T, files map[string]string) {
			n++
			swapDir(t, root, link, fmt.Sprintf("v%d", n), files)
		}}
	}
	bundle := func(t *testing.T) policySource {
		file := filepath.Join(t.TempDir(), "bundle.tar.gz")
		return policySource{load: policy.BundleLoader(file), publish: func(t *testing.T, files map[string]string) {
			if err := pemfile.WriteFileAtomic(file, tarGz(t, files), 0o600); err != nil {
				t.Fatal(err)
			}
		}}
	}
	return map[string]policySource{"directory": dir(t), "bundle": bundle(t)}
}

// clock steps a watch loop (Engine.Poller) with time of its own: each step
// is one poll, interval after the previous one.
type clock struct {
	poll     func(context.Context, time.Time)
	now      time.Time
	interval time.Duration
}

func newClock(e *policy.Engine, load policy.Loader, interval time.Duration) *clock {
	return &clock{poll: e.Poller(load, interval), now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), interval: interval}
}

// step polls n times.
func (c *clock) step(n int) {
	for range n {
		c.now = c.now.Add(c.interval)
		c.poll(context.Background(), c.now)
	}
}

// countLines counts the log lines holding every one of substrs.
func countLines(log string, substrs ...string) int {
	n := 0
lines:
	for _, line := range strings.Split(log, "\n") {
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		n++
	}
	return n
}

// TestUntestedPolicyRefused: a policy version in which no rego test runs is
// refused, from a directory and from a bundle, when the service starts and
// when it reloads — the tests deleted and a rule opening bob's record to
// every caller added, the version the watcher finds is refused and the
// last good one keeps denying bob over real TLS. Only an engine made with
// WithUntestedPolicies loads it, with a warning on every load.
func TestUntestedPolicyRefused(t *testing.T) {
	t.Parallel()
	for name, src := range policySources(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			src.publish(t, untested("at start"))
			b, err := src.load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := policy.NewEngine(ctx, b, policy.WithLogger(slog.New(slog.DiscardHandler))); !errors.Is(err, policy.ErrUntested) {
				t.Fatalf("an untested policy at start: %v, want ErrUntested", err)
			}

			src.publish(t, alicePolicy)
			if b, err = src.load(ctx); err != nil {
				t.Fatal(err)
			}
			strictLog, allowLog := &lineLog{}, &lineLog{}
			strict, err := policy.NewEngine(ctx, b, policy.WithLogger(slog.New(slog.NewTextHandler(strictLog, nil))))
			if err != nil {
				t.Fatal(err)
			}
			permissive, err := policy.NewEngine(ctx, b, policy.WithLogger(slog.New(slog.NewTextHandler(allowLog, nil))), policy.WithUntestedPolicies())
			if err != nil {
				t.Fatal(err)
			}
			good := strict.Revision()
			ca := certstest.NewCA(t)
			srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), strict, (&testusers.Service{}).Mount)
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Client("/client/cli")))
			if err != nil {
				t.Fatal(err)
			}
			readBob := func(step string) {
				t.Helper()
				_, err := client.GetUser(ctx, &userv1.GetUserRequest{Id: "bob"})
				if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "only alice's record") {
					t.Fatalf("%s: reading bob's record: %v, want permission denied by the tested policy", step, err)
				}
			}
			readBob("before the reload")

			strictClock, allowClock := newClock(strict, src.load, time.Second), newClock(permissive, src.load, time.Second)
			for i, mark := range []string{"first reload", "second reload"} {
				src.publish(t, untested(mark))
				strictClock.step(2) // read twice: settled, tried
				allowClock.step(2)
				if strict.Revision() != good {
					t.Fatalf("%s: the untested version was swapped in", mark)
				}
				if n := countLines(strictLog.String(), "level=ERROR", "policy refused", "no rego tests"); n != i+1 {
					t.Fatalf("%s: %d refusals logged, want %d:\n%s", mark, n, i+1, strictLog.String())
				}
				readBob("after the " + mark)
				if _, err := client.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"}); err != nil {
					t.Fatalf("%s: reading alice's record: %v", mark, err)
				}

				// The unsafe option takes it, and warns on every load.
				d, err := permissive.Eval(ctx, ast.MustParseTerm(`{"request": {"id": "bob"}}`).Value)
				if err != nil || !d.Allow {
					t.Fatalf("%s: with WithUntestedPolicies, bob: %+v %v; the untested version should decide", mark, d, err)
				}
				if n := countLines(allowLog.String(), "level=WARN", "WITHOUT rego tests", "tests=0"); n != i+1 {
					t.Fatalf("%s: %d warnings, want one per load:\n%s", mark, n, allowLog.String())
				}
			}
		})
	}
}

// flakyServer serves GET / with 503 while down is set, else body(), and
// records when it was asked (the tick of the test's clock).
type flakyServer struct {
	mu   sync.Mutex
	down bool
	body func() []byte
	tick int
	hits []int
}

func (f *flakyServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hits = append(f.hits, f.tick)
	if f.down {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write(f.body())
}

func (f *flakyServer) set(tick int, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tick, f.down = tick, down
}

func (f *flakyServer) takeHits() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.hits
	f.hits = nil
	return h
}

// TestWatchRetriesUnreadableSource: a source that fails (a server fetched
// in full on every poll) is asked
// again after a delay that doubles from the poll interval, up to two
// minutes, not on every poll; the first failure is an error in the log, a
// failed retry a warning; when it answers again, its new version is
// swapped in once it has settled.
func TestWatchRetriesUnreadableSource(t *testing.T) {
	t.Parallel()
	v1 := versionFiles("v1", true, "[]", "true")
	v2 := versionFiles("v2", false, `["v2"]`, "false")
	var served atomic.Pointer[map[string]string]
	served.Store(&v1)
	bundles := &flakyServer{body: func() []byte { return tarGz(t, *served.Load()) }}
	srv := httptest.NewServer(bundles)
	defer srv.Close()
	load := httpLoader(srv.URL+"/bundle.tar.gz", srv.Client())
	b, err := load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	engineLog := &lineLog{}
	e, err := policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.NewTextHandler(engineLog, nil))))
	if err != nil {
		t.Fatal(err)
	}
	bundles.takeHits()

	// Polls every 10 s; the server is down for the first 120 polls (20
	// minutes), then serves v2.
	clk := newClock(e, load, 10*time.Second)
	served.Store(&v2)
	for tick := 1; tick <= 130; tick++ {
		bundles.set(tick, tick <= 120)
		clk.step(1)
	}
	// Asked at 1, then after 10 s, 20 s, 40 s, 80 s, then every 120 s (12
	// polls, where the doubling is capped): 1, 2, 4, 8, 16, 28, 40, ..., 112,
	// 124 (answers), then every poll again: 125 (settled, swapped in), ...
	want := []int{1, 2, 4, 8, 16}
	for tick := 28; tick <= 124; tick += 12 {
		want = append(want, tick)
	}
	want = append(want, 125, 126, 127, 128, 129, 130)
	if got := bundles.takeHits(); !slices.Equal(got, want) {
		t.Fatalf("fetched at polls %v, want %v", got, want)
	}
	if e.Revision() != (&policy.Bundle{Modules: v2}).Revision() {
		t.Fatalf("v2 was not swapped in once served; log:\n%s", engineLog.String())
	}
	log := engineLog.String()
	failures := 0
	for _, tick := range want {
		if tick <= 120 {
			failures++
		}
	}
	if n := countLines(log, "level=ERROR", "policy source unreadable", "HTTP 503", "retry_in=10s"); n != 1 {
		t.Errorf("%d errors for the first failure, want 1:\n%s", n, log)
	}
	if n := countLines(log, "level=WARN", "still unreadable", "HTTP 503"); n != failures-1 {
		t.Errorf("%d warnings for %d failed retries:\n%s", n, failures-1, log)
	}
	if n := countLines(log, "retry_in=2m0s"); n != failures-4 {
		t.Errorf("%d retries at the two-minute cap, want %d:\n%s", n, failures-4, log)
	}
	if n := countLines(log, "level=INFO", "readable again", fmt.Sprintf("failures=%d", failures)); n != 1 {
		t.Errorf("recovery not logged:\n%s", log)
	}
}

// TestWatchRetriesRefusedVersion: a version that was refused is loaded again,
// with the same backoff, while the source still holds it — here its rego
// test needs a service (on 127.0.0.1) that is down, then up — and is
// swapped in when it passes; the source is still read on every poll, so a
// new version is tried as soon as it settles, backoff or not.
func TestWatchRetriesRefusedVersion(t *testing.T) {
	t.Parallel()
	dependency := &flakyServer{down: true, body: func() []byte { return []byte("{}") }}
	dep := httptest.NewServer(dependency)
	defer dep.Close()
	needsDependency := map[string]string{
		"authz.rego": "package palisade.authz\nallow if true\n",
		"authz_test.rego": `package palisade.authz_test
test_dependency_up if http.send({"method": "GET", "url": "` + dep.URL + `"}).status_code == 200
`,
	}
	src := policySources(t)["directory"]
	src.publish(t, versionFiles("v1", true, "[]", "true"))
	b, err := src.load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	engineLog := &lineLog{}
	e, err := policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.NewTextHandler(engineLog, nil))))
	if err != nil {
		t.Fatal(err)
	}
	v1 := e.Revision()
	reads := 0
	clk := newClock(e, func(ctx context.Context) (*policy.Bundle, error) { reads++; return src.load(ctx) }, time.Second)

	src.publish(t, needsDependency)
	for tick := 1; tick <= 40; tick++ {
		dependency.set(tick, true)
		clk.step(1)
	}
	// Read at 1, settled and tried at 2; tried again 1, 2, 4, 8, 16 s later.
	if got, want := dependency.takeHits(), []int{2, 3, 5, 9, 17, 33}; !slices.Equal(got, want) {
		t.Fatalf("tried at polls %v, want %v", got, want)
	}
	if reads != 40 {
		t.Fatalf("the source was read %d times in 40 polls; a refusal must not stop the reads", reads)
	}
	if e.Revision() != v1 {
		t.Fatal("a refused version was swapped in")
	}
	log := engineLog.String()
	if n := countLines(log, "level=ERROR", "policy refused", "retry_in=1s"); n != 1 {
		t.Fatalf("%d errors for the first refusal, want 1:\n%s", n, log)
	}
	if n := countLines(log, "level=WARN", "policy refused again", "test_dependency_up"); n != 5 {
		t.Fatalf("%d warnings for 5 refused retries:\n%s", n, log)
	}

	// The dependency is back: the next retry, at 65, passes.
	for tick := 41; tick <= 70; tick++ {
		dependency.set(tick, false)
		clk.step(1)
	}
	if got, want := dependency.takeHits(), []int{65}; !slices.Equal(got, want) {
		t.Fatalf("tried at polls %v, want %v", got, want)
	}
	if e.Revision() != (&policy.Bundle{Modules: needsDependency}).Revision() {
		t.Fatalf("the version was not swapped in when its test passed; log:\n%s", engineLog.String())
	}
	if n := countLines(engineLog.String(), "level=INFO", "policy accepted on retry", "refusals=6"); n != 1 {
		t.Fatalf("the accepted retry was not logged:\n%s", engineLog.String())
	}

	// A new version while a refused one waits out its backoff is tried as
	// soon as it settles.
	dependency.set(0, true)
	src.publish(t, map[string]string{"authz.rego": needsDependency["authz.rego"] + "# v3\n", "authz_test.rego": needsDependency["authz_test.rego"]})
	clk.step(10) // refused at the 2nd poll; next retry 8 polls later
	src.publish(t, versionFiles("v4", true, "[]", "true"))
	clk.step(2)
	if e.Revision() != (&policy.Bundle{Modules: versionFiles("v4", true, "[]", "true")}).Revision() {
		t.Fatalf("a new version waited for the backoff of a refused one; log:\n%s", engineLog.String())
	}
}

// TestWatchRefusesNonPositiveInterval: Watch fails at once rather than
// never polling, or panicking in time.NewTicker.
func TestWatchRefusesNonPositiveInterval(t *testing.T) {
	t.Parallel()
	e, err := policy.NewEngine(context.Background(), &policy.Bundle{Modules: alicePolicy}, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	for _, interval := range []time.Duration{0, -time.Second} {
		if err := e.Watch(context.Background(), policy.DirLoader(t.TempDir()), interval); err == nil {
			t.Fatalf("Watch with interval %s returned nil", interval)
		}
	}
}

// httpLoader is a Loader fetching a bundle in full on every poll: a source
// that fails the way a server does, for Watch's retries.
func httpLoader(url string, client *http.Client) policy.Loader {
	return func(ctx context.Context) (*policy.Bundle, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		res, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("bundle fetch %s: HTTP %d", url, res.StatusCode)
		}
		return policy.ReadBundle(res.Body, url)
	}
}
