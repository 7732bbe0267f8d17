package order

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

func newTestCache(t *testing.T, opts UserCacheOptions) *UserCache {
	t.Helper()
	opts.Logger = slog.New(slog.DiscardHandler)
	c, err := NewUserCache(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fetcher answers lookups with a user named after the number of calls.
type fetcher struct{ calls atomic.Int64 }

func (f *fetcher) fetch(id string) func(context.Context) (*userv1.User, error) {
	return func(context.Context) (*userv1.User, error) {
		n := f.calls.Add(1)
		return &userv1.User{Id: id, DisplayName: id + string(rune('0'+n))}, nil
	}
}

func get(t *testing.T, c *UserCache, f *fetcher, id string) string {
	t.Helper()
	u, err := c.Get(context.Background(), id, f.fetch(id))
	if err != nil {
		t.Fatal(err)
	}
	return u.GetDisplayName()
}

func change(seq int64, id string) *userv1.UserChange {
	return &userv1.UserChange{Sequence: seq, UserId: id, Kind: userv1.UserChangeKind_USER_CHANGE_KIND_UPDATED}
}

func TestCacheServesOnlyWhileLive(t *testing.T) {
	t.Parallel()
	c, f := newTestCache(t, UserCacheOptions{}), &fetcher{}
	// Not caught up yet: every lookup asks, nothing is kept.
	if get(t, c, f, "alice") != "alice1" || get(t, c, f, "alice") != "alice2" {
		t.Fatal("a cache that is not live answered from memory")
	}
	c.applyHeartbeat(&userv1.WatchHeartbeat{})
	if get(t, c, f, "alice") != "alice3" || get(t, c, f, "alice") != "alice3" {
		t.Fatal("a live cache did not keep alice")
	}
	c.down() // the feed's stream ended
	if get(t, c, f, "alice") != "alice4" {
		t.Fatal("the cache answered with the feed down")
	}
	c.applyHeartbeat(&userv1.WatchHeartbeat{})
	c.mu.Lock()
	c.liveUntil = time.Now() // the feed went silent: its liveness ran out
	c.mu.Unlock()
	if get(t, c, f, "alice") != "alice5" {
		t.Fatal("the cache answered after its liveness ran out")
	}
	// The entry was kept: once caught up again, it answers, until Run stops.
	c.applyHeartbeat(&userv1.WatchHeartbeat{})
	if get(t, c, f, "alice") != "alice3" {
		t.Fatal("the entry kept across the outage was lost")
	}
	want := UserCacheStats{Hits: 2, Misses: 1, Bypasses: 4, Entries: 1, Live: true}
	if s := c.Stats(); s != want {
		t.Fatalf("stats %+v; want %+v", s, want)
	}
	c.down()
	if get(t, c, f, "alice") != "alice6" || c.Stats().Live {
		t.Fatal("a stopped cache answered")
	}
}

func TestCacheInvalidatesAndResets(t *testing.T) {
	t.Parallel()
	c, f := newTestCache(t, UserCacheOptions{}), &fetcher{}
	c.applyHeartbeat(&userv1.WatchHeartbeat{})
	get(t, c, f, "alice") // alice1
	get(t, c, f, "bob")   // bob2
	if ev, ok := c.applyChange(change(1, "alice")); !ok || !ev.Dropped {
		t.Fatalf("change to a cached user: %+v, %v", ev, ok)
	}
	if ev, ok := c.applyChange(change(2, "carol")); !ok || ev.Dropped {
		t.Fatalf("change to an uncached user: %+v, %v", ev, ok)
	}
	if _, ok := c.applyChange(change(2, "bob")); ok {
		t.Fatal("a sequence applied twice")
	}
	if get(t, c, f, "alice") != "alice3" || get(t, c, f, "bob") != "bob2" {
		t.Fatal("invalidation dropped the wrong entry")
	}
	// A gap the server did not announce flushes everything.
	if ev, ok := c.applyChange(change(5, "zed")); !ok || !ev.Dropped {
		t.Fatalf("gap: %+v, %v", ev, ok)
	}
	if s := c.Stats(); s.Entries != 0 || s.LastSequence != 5 {
		t.Fatalf("after a gap: %+v", s)
	}
	get(t, c, f, "bob")
	c.applyReset(&userv1.WatchReset{OldestSequence: 40, LatestSequence: 50})
	if s := c.Stats(); s.Entries != 0 || s.LastSequence != 39 || s.Resets != 1 {
		t.Fatalf("after a reset: %+v", s)
	}
	// A heartbeat that disagrees with what was applied flushes too.
	get(t, c, f, "bob")
	c.applyHeartbeat(&userv1.WatchHeartbeat{LatestSequence: 41})
	if s := c.Stats(); s.Entries != 0 || s.LastSequence != 41 {
		t.Fatalf("after a disagreeing heartbeat: %+v", s)
	}
}

// TestCacheLeaseLosesToAConcurrentChange: a change that arrives while a
// lookup is asking the user service cancels the lookup's lease; its answer,
// possibly from before the change, is not cached.
func TestCacheLeaseLosesToAConcurrentChange(t *testing.T) {
	t.Parallel()
	c, f := newTestCache(t, UserCacheOptions{}), &fetcher{}
	c.applyHeartbeat(&userv1.WatchHeartbeat{})
	u, err := c.Get(context.Background(), "alice", func(ctx context.Context) (*userv1.User, error) {
		c.applyChange(change(1, "alice"))
		return &userv1.User{Id: "alice", DisplayName: "before the change"}, nil
	})
	if err != nil || u.GetDisplayName() != "before the change" {
		t.Fatalf("lookup: %v, %v", u, err)
	}
	if got := get(t, c, f, "alice"); got != "alice1" {
		t.Fatalf("the answer overtaken by a change was cached: %q", got)
	}
	// Failed lookups and answers for another user are not cached either.
	if _, err := c.Get(context.Background(), "bob", func(context.Context) (*userv1.User, error) { return nil, errors.New("down") }); err == nil {
		t.Fatal("error lost")
	}
	if _, err := c.Get(context.Background(), "carol", func(context.Context) (*userv1.User, error) { return &userv1.User{Id: "mallory"}, nil }); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Entries != 1 {
		t.Fatalf("entries %d; want alice only", s.Entries)
	}
}

func TestCacheEvictsTheLeastRecentlyUsedAndExpiresOldEntries(t *testing.T) {
	t.Parallel()
	c, f := newTestCache(t, UserCacheOptions{Size: 2}), &fetcher{}
	c.applyHeartbeat(&userv1.WatchHeartbeat{})
	get(t, c, f, "a") // a1
	get(t, c, f, "b") // b2
	get(t, c, f, "a") // hit: a is now the most recent
	get(t, c, f, "c") // c3 evicts b
	if get(t, c, f, "a") != "a1" || get(t, c, f, "b") != "b4" {
		t.Fatal("the wrong entry was evicted")
	}
	if s := c.Stats(); s.Entries != 2 {
		t.Fatalf("entries %d; want 2", s.Entries)
	}

	aged := newTestCache(t, UserCacheOptions{MaxAge: time.Nanosecond})
	aged.applyHeartbeat(&userv1.WatchHeartbeat{})
	get(t, aged, f, "a")
	time.Sleep(time.Millisecond)
	if s := aged.Stats(); get(t, aged, f, "a") == "a1" || aged.Stats().Misses != s.Misses+1 {
		t.Fatal("an entry older than MaxAge was served")
	}
}

func TestUserCacheOptionsAreChecked(t *testing.T) {
	t.Parallel()
	for _, o := range []UserCacheOptions{
		{Size: -1}, {MaxAge: -time.Second}, {Liveness: -time.Second},
		{MinBackoff: time.Minute, MaxBackoff: time.Second},
	} {
		if _, err := NewUserCache(o); err == nil {
			t.Errorf("NewUserCache(%+v) accepted", o)
		}
	}
}

// silentFeed sends one heartbeat per subscription and then nothing, like a
// user service that hangs or a network that drops packets silently.
type silentFeed struct {
	userv1connect.UnimplementedUserServiceHandler
	subscriptions atomic.Int64
}

func (s *silentFeed) WatchUserChanges(ctx context.Context, req *userv1.WatchUserChangesRequest, stream *connect.ServerStream[userv1.WatchUserChangesResponse]) error {
	s.subscriptions.Add(1)
	hb := &userv1.WatchHeartbeat{LatestSequence: req.GetAfterSequence()}
	if err := stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Heartbeat{Heartbeat: hb}}); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestSilentFeedStopsTheCacheAndReconnects: a feed that goes quiet without
// closing makes the cache stop serving Liveness after its last heartbeat,
// and the subscriber drops the stream and subscribes again.
func TestSilentFeedStopsTheCacheAndReconnects(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	feedSvc := &silentFeed{}
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		userv1connect.UserServiceWatchUserChangesProcedure: {Workloads: []string{"spiffe://palisade.local/svc/order"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authorizer, func(s *rpc.Server) error {
		return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(feedSvc))
	})
	feed, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(ca.Server("/svc/order")))
	if err != nil {
		t.Fatal(err)
	}
	const liveness = 300 * time.Millisecond
	c := newTestCache(t, UserCacheOptions{Liveness: liveness, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx, feed) }()

	// The cache goes live on each subscription's heartbeat, and stops
	// serving when the silence lasts; the subscriber comes back each time.
	deadline := time.Now().Add(30 * time.Second)
	var sawLive, sawLapse bool
	for feedSvc.subscriptions.Load() < 3 || !sawLapse {
		if time.Now().After(deadline) {
			t.Fatalf("live %v, lapsed %v, %d subscriptions: %+v", sawLive, sawLapse, feedSvc.subscriptions.Load(), c.Stats())
		}
		live := c.Stats().Live
		sawLapse = sawLapse || sawLive && !live
		sawLive = sawLive || live
		time.Sleep(time.Millisecond)
	}
	if s := c.Stats(); s.Reconnects < 2 {
		t.Errorf("stats %+v; want at least 2 reconnects", s)
	}
	if err := c.Run(ctx, feed); err == nil {
		t.Error("a second Run was accepted")
	}
	cancel()
	if err := <-runErr; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v", err)
	}
	<-c.Done()
}
