package overtls_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/token"
)

// jwksServer serves a JWKS over mTLS from a Palisade server; broken makes
// it answer 500 instead; fetches counts requests; hold, when set, is called
// by the next request before it is answered.
type jwksServer struct {
	srv     *rpctest.Server
	jwks    token.JWKSHandler
	broken  atomic.Bool
	fetches atomic.Int64
	hold    atomic.Pointer[func()]
}

func newJWKSServer(t *testing.T, ca *certstest.CA) *jwksServer {
	t.Helper()
	j := &jwksServer{}
	none, err := authz.NewAllowList(nil)
	if err != nil {
		t.Fatal(err)
	}
	j.srv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")), none, func(s *rpc.Server) error {
		return s.HandleHTTP(token.JWKSPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			j.fetches.Add(1)
			if hold := j.hold.Swap(nil); hold != nil {
				(*hold)()
			}
			if j.broken.Load() {
				http.Error(w, "broken", http.StatusInternalServerError)
				return
			}
			j.jwks.ServeHTTP(w, r)
		}))
	})
	return j
}

func publicKeys(t *testing.T, ks *token.KeySet) []*token.PublicKey {
	t.Helper()
	pubs, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	return pubs
}

func TestRemoteKeys(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	j := newJWKSServer(t, ca)
	ks, _ := token.NewKeySet(token.AlgEdDSA)
	if err := j.jwks.Set(publicKeys(t, ks)); err != nil {
		t.Fatal(err)
	}
	client, err := rpc.NewHTTPClient(ca.Source(ca.Server("/svc/order")), rpc.WithServerID("spiffe://palisade.local/svc/user"))
	if err != nil {
		t.Fatal(err)
	}
	keys := token.NewRemoteKeys(j.srv.URL+token.JWKSPath, client, token.WithMinRefreshInterval(time.Hour), token.WithLogger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()

	first := ks.Active
	if k, err := keys.Key(ctx, first); err != nil || k.ID != first {
		t.Fatalf("first lookup: %v %v", k, err)
	}
	gen := keys.Generation()

	// An unknown kid refetches once; within MinRefreshInterval it does not
	// again, however many forged kids arrive.
	before := j.fetches.Load()
	for i := 0; i < 20; i++ {
		if _, err := keys.Key(ctx, "forged"); !errors.Is(err, token.ErrUnknownKey) {
			t.Fatalf("forged kid: %v", err)
		}
	}
	if n := j.fetches.Load() - before; n != 0 {
		t.Fatalf("%d fetches for forged kids within the interval", n)
	}

	// A rotated-in key is found after an explicit refresh; the generation moves.
	if _, _, err := ks.Rotate(token.AlgES256, 1); err != nil {
		t.Fatal(err)
	}
	if err := j.jwks.Set(publicKeys(t, ks)); err != nil {
		t.Fatal(err)
	}
	if err := keys.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Key(ctx, ks.Active); err != nil || keys.Generation() == gen {
		t.Fatalf("after rotation: %v, generation %d (was %d)", err, keys.Generation(), gen)
	}

	// A failing issuer keeps the last good set.
	j.broken.Store(true)
	if err := keys.Refresh(ctx); err == nil {
		t.Fatal("refresh from a broken issuer succeeded")
	}
	if _, err := keys.Key(ctx, first); err != nil {
		t.Fatalf("last good set lost: %v", err)
	}
}

// TestRemoteKeysLookupDuringAFetch: a token that arrives while a fetch is
// in flight (Run's first, as a service starts and its first calls come in)
// waits for that fetch and is verified with the keys it brought: it is not
// refused because a fetch has just happened, nor does it fetch again.
func TestRemoteKeysLookupDuringAFetch(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	j := newJWKSServer(t, ca)
	ks, _ := token.NewKeySet(token.AlgEdDSA)
	if err := j.jwks.Set(publicKeys(t, ks)); err != nil {
		t.Fatal(err)
	}
	client, err := rpc.NewHTTPClient(ca.Source(ca.Server("/svc/order")), rpc.WithServerID("spiffe://palisade.local/svc/user"))
	if err != nil {
		t.Fatal(err)
	}
	keys := token.NewRemoteKeys(j.srv.URL+token.JWKSPath, client, token.WithMinRefreshInterval(time.Hour), token.WithLogger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()

	// The first fetch is held at the issuer until the lookup waits for it.
	inFetch, release := make(chan struct{}), make(chan struct{})
	hold := func() { close(inFetch); <-release }
	j.hold.Store(&hold)
	fetched := make(chan error, 1)
	go func() { fetched <- keys.Refresh(ctx) }()
	<-inFetch
	looked := make(chan error, 1)
	go func() {
		k, err := keys.Key(ctx, ks.Active)
		if err == nil && k.ID != ks.Active {
			err = fmt.Errorf("got key %q", k.ID)
		}
		looked <- err
	}()
	waitForGoroutine(t, "a lookup waiting for the fetch in flight", "token.(*RemoteKeys).refresh", "sync.(*Mutex)", "TestRemoteKeysLookupDuringAFetch")
	close(release)
	if err := <-fetched; err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if err := <-looked; err != nil {
		t.Fatalf("lookup during the fetch: %v", err)
	}
	if n := j.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches; want 1 (the lookup uses the one in flight)", n)
	}
}

// waitForGoroutine waits until a goroutine's stack holds every one of
// frames: a state of the program, not a length of time.
func waitForGoroutine(t *testing.T, what string, frames ...string) {
	t.Helper()
	rpctest.WaitFor(t, what, func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			all := true
			for _, f := range frames {
				all = all && strings.Contains(g, f)
			}
			if all {
				return true
			}
		}
		return false
	})
}

func TestRemoteKeysRunStops(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	j := newJWKSServer(t, ca)
	ks, _ := token.NewKeySet(token.AlgEdDSA)
	_ = j.jwks.Set(publicKeys(t, ks))
	client, _ := rpc.NewHTTPClient(ca.Source(ca.Server("/svc/order")))
	keys := token.NewRemoteKeys(j.srv.URL+token.JWKSPath, client, token.WithRefreshInterval(20*time.Millisecond), token.WithLogger(slog.New(slog.DiscardHandler)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- keys.Run(ctx) }()
	for j.fetches.Load() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	n := j.fetches.Load()
	time.Sleep(60 * time.Millisecond)
	if j.fetches.Load() != n {
		t.Fatal("Run kept fetching after it returned")
	}
}

func TestWatchKeySet(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "signing-keys.json")
	ks, _, err := token.LoadOrCreateKeySet(path, token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	type change struct {
		ks  *token.KeySet
		err error
	}
	applied := make(chan change, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- token.WatchKeySet(ctx, path, 5*time.Millisecond, func(ks *token.KeySet, err error) { applied <- change{ks, err} })
	}()
	next := func(what string) change {
		t.Helper()
		select {
		case c := <-applied:
			return c
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not picked up", what)
		}
		return change{}
	}

	// A broken file is reported, not applied. It is written again, each
	// time different, until the watcher (which may not have read the file
	// yet when the first is written) reports it.
	var broken change
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		if err := os.WriteFile(path, []byte(fmt.Sprintf("{not json %d", i)), 0o600); err != nil {
			t.Fatal(err)
		}
		select {
		case broken = <-applied:
		case <-time.After(20 * time.Millisecond):
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("the broken file not picked up")
		}
		break
	}
	if broken.ks != nil || broken.err == nil {
		t.Fatalf("a broken file gave set %+v, error %v", broken.ks, broken.err)
	}
	// ...and a rotation is picked up.
	newID, _, err := ks.Rotate(token.AlgEdDSA, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Save(path); err != nil {
		t.Fatal(err)
	}
	got := next("the rotation")
	for got.err != nil { // a late report of one of the broken files
		got = next("the rotation")
	}
	if got.ks.Active != newID {
		t.Fatalf("applied active %s, want %s", got.ks.Active, newID)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("WatchKeySet returned %v", err)
	}
}

// TestRemoteKeysLookupDuringFetch: a lookup of a key that a fetch in
// flight brings (Run's first, as a service starts) finds it once that
// fetch ends, although the fetch means this lookup may not fetch again
// for the minimum refresh interval: a valid token is not refused for an
// hour because it came at start-up.
func TestRemoteKeysLookupDuringFetch(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	ks, _ := token.NewKeySet(token.AlgEdDSA)
	var jwks token.JWKSHandler
	if err := jwks.Set(publicKeys(t, ks)); err != nil {
		t.Fatal(err)
	}
	none, err := authz.NewAllowList(nil)
	if err != nil {
		t.Fatal(err)
	}
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), none, func(s *rpc.Server) error {
		return s.HandleHTTP(token.JWKSPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case arrived <- struct{}{}:
			default:
			}
			<-release
			jwks.ServeHTTP(w, r)
		}))
	})
	client, err := rpc.NewHTTPClient(ca.Source(ca.Server("/svc/order")), rpc.WithServerID("spiffe://palisade.local/svc/user"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections)
	keys := token.NewRemoteKeys(srv.URL+token.JWKSPath, client, token.WithMinRefreshInterval(time.Hour), token.WithLogger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()
	fetched := make(chan error, 1)
	go func() { fetched <- keys.Refresh(ctx) }()
	<-arrived
	looked := make(chan error, 1)
	go func() {
		_, err := keys.Key(ctx, ks.Active)
		looked <- err
	}()
	// Time for the lookup to wait for the fetch (if it is slower, it
	// finds the key without waiting, and the test proves less).
	time.Sleep(200 * time.Millisecond)
	close(release)
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	if err := <-looked; err != nil {
		t.Fatalf("lookup during the first fetch: %v", err)
	}
}
