package policy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs/certstest"
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

func versionFiles(name string, allow bool, reason, testWants string) map[string]string {
	return map[string]string{
		"authz.rego": fmt.Sprintf(`# version %s
package palisade.authz
decision := {"allow": %v, "reasons": %s}
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
	engine, err := policy.NewEngine(ctx, b, policy.EngineOptions{Logger: slog.New(slog.NewTextHandler(engineLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	watchDone := make(chan error, 1)
	go func() { watchDone <- engine.Watch(ctx, load, 5*time.Millisecond) }()

	ca := certstest.NewCA(t)
	users := &rpctest.Users{}
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
	engine, err := policy.NewEngine(ctx, initial, policy.EngineOptions{Logger: slog.New(slog.NewTextHandler(engineLog, nil))})
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
