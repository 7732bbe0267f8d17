package user_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/services/internal/logrecorder"
	"github.com/palisade-rpc/palisade/services/user"
)

// stalenessBound is the README's bound ("Streaming and fan-out"): a cached
// user is served at most 3 s (the order service's --user-cache-liveness)
// after the feed's last heartbeat, and a heartbeat follows every change
// committed before it. A change must reach a subscriber of any replica
// well within it.
const stalenessBound = 3 * time.Second

// quiet is the logger of stores whose listener logs do not matter.
var quiet = slog.New(slog.DiscardHandler)

// openReplica opens a store on the PostgreSQL database at url, as one more
// replica sharing it.
func openReplica(t *testing.T, url string, opts ...user.StoreOption) *user.Store {
	t.Helper()
	s, err := user.OpenStore(context.Background(), url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestReplicasStartingAtOnceSeedOnce: four replicas open a new database
// and seed it at the same time; one seeds, the others find the users.
func TestReplicasStartingAtOnceSeedOnce(t *testing.T) {
	t.Parallel()
	const replicas = 4
	url := user.PG.NewDatabase(t)
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		mu     sync.Mutex
		seeded int
		stores []*user.Store
	)
	for range replicas {
		wg.Go(func() {
			<-start
			s, err := user.OpenStore(context.Background(), url, user.WithStoreLogger(quiet))
			if err != nil {
				t.Error(err)
				return
			}
			ok, err := s.SeedDemoUsers(context.Background())
			mu.Lock()
			defer mu.Unlock()
			stores = append(stores, s)
			if err != nil {
				t.Error(err)
			}
			if ok {
				seeded++
			}
		})
	}
	close(start)
	wg.Wait()
	for _, s := range stores {
		t.Cleanup(func() { _ = s.Close() })
	}
	if t.Failed() {
		return
	}
	if seeded != 1 {
		t.Fatalf("%d replicas seeded, want 1", seeded)
	}
	wantChanges(t, changes(t, stores[0], 0),
		change{1, "alice", created}, change{2, "bob", created}, change{3, "admin", created})
}

// feed is a WatchUserChanges stream from a service in this process, served
// over HTTP on loopback; its events arrive on a channel.
type feed struct {
	events chan *userv1.WatchUserChangesResponse
}

// watch serves a user service over store with the given heartbeat interval
// and subscribes to its change feed after sequence after. The stream and
// the server stop when the test ends.
func watch(t *testing.T, store *user.Store, heartbeat time.Duration, after int64) *feed {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(userv1connect.NewUserServiceHandler(user.NewService(store, quiet, user.WithHeartbeatInterval(heartbeat))))
	srv := httptest.NewServer(mux) // 127.0.0.1
	ctx, cancel := context.WithCancel(context.Background())
	client := userv1connect.NewUserServiceClient(srv.Client(), srv.URL)
	stream, err := client.WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{AfterSequence: after})
	if err != nil {
		t.Fatal(err)
	}
	f := &feed{events: make(chan *userv1.WatchUserChangesResponse, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for stream.Receive() {
			f.events <- stream.Msg()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = stream.Close()
		srv.Close()
	})
	return f
}

// next returns the next event, failing the test if none comes within
// limit.
func (f *feed) next(t *testing.T, limit time.Duration) *userv1.WatchUserChangesResponse {
	t.Helper()
	select {
	case ev := <-f.events:
		return ev
	case <-time.After(limit):
		t.Fatalf("no event on the feed within %v", limit)
		return nil
	}
}

// catchUp reads the replay of changes 1..latest and the heartbeat after it.
func (f *feed) catchUp(t *testing.T, latest int64) {
	t.Helper()
	for seq := int64(1); seq <= latest; seq++ {
		if got := f.next(t, 30*time.Second).GetChange().GetSequence(); got != seq {
			t.Fatalf("replay: change %d, want %d", got, seq)
		}
	}
	if hb := f.next(t, 30*time.Second).GetHeartbeat(); hb == nil || hb.GetLatestSequence() != latest {
		t.Fatalf("after the replay: %v, want a heartbeat at %d", hb, latest)
	}
}

func rename(t *testing.T, s *user.Store, name string) {
	t.Helper()
	if _, err := s.Update(context.Background(), &userv1.User{Id: "alice", DisplayName: name}, []string{"display_name"}); err != nil {
		t.Fatal(err)
	}
}

// TestAWatcherOfReplicaBSeesReplicaAsChanges: two replicas share a
// database; a subscriber of B's feed gets the changes written through A,
// woken by B's listener: its heartbeat interval is an hour, so no periodic
// read can stand in for the notification.
func TestAWatcherOfReplicaBSeesReplicaAsChanges(t *testing.T) {
	t.Parallel()
	url := user.PG.NewDatabase(t)
	a, b := openReplica(t, url), openReplica(t, url)
	if _, err := a.SeedDemoUsers(context.Background()); err != nil {
		t.Fatal(err)
	}
	f := watch(t, b, time.Hour, 0)
	f.catchUp(t, 3)
	var latencies []time.Duration
	for i := range 20 {
		start := time.Now()
		rename(t, a, fmt.Sprintf("Alice %d", i))
		ev := f.next(t, stalenessBound)
		latencies = append(latencies, time.Since(start))
		if got, want := ev.GetChange().GetSequence(), int64(4+i); got != want {
			t.Fatalf("B's feed sent %v, want change %d", ev, want)
		}
	}
	slices.Sort(latencies)
	t.Logf("from A's Update call to B's subscriber, 20 changes: p50 %v, max %v (bound %v)",
		latencies[len(latencies)/2], latencies[len(latencies)-1], stalenessBound)
}

// blockListeners ends the database's LISTEN connections and refuses new
// connections to it, so the listeners cannot reconnect, until the returned
// function is called. Connections the stores' pools hold stay open, so they
// can still write.
func blockListeners(t *testing.T, dbURL string) (unblock func()) {
	t.Helper()
	ctx := context.Background()
	// From the server's maintenance database: a session cannot bar
	// connections to its own.
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	u.Path = "/postgres"
	admin, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(ctx) })
	db := pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+db+" ALLOW_CONNECTIONS false"); err != nil {
		t.Fatal(err)
	}
	var ended int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = $1 AND query LIKE 'LISTEN %'`, name).Scan(&ended); err != nil || ended == 0 {
		t.Fatalf("ended %d listeners, %v", ended, err)
	}
	return func() {
		t.Helper()
		if _, err := admin.Exec(ctx, "ALTER DATABASE "+db+" ALLOW_CONNECTIONS true"); err != nil {
			t.Fatal(err)
		}
	}
}

// waitLog waits until rec has an entry msg.
func waitLog(t *testing.T, rec *logrecorder.Recorder, msg string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for len(rec.Find(msg, nil)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged within a minute: %v", msg, rec.Entries())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestListenerReconnectsAndMissesNothing: B's listener connection is
// terminated, and cannot reconnect while a change is committed through A,
// so the change's notification is lost. When B's listener reconnects it
// wakes B's subscriber, which reads from its last sequence and gets the
// change. The heartbeat interval is an hour: only the listener can wake it.
func TestListenerReconnectsAndMissesNothing(t *testing.T) {
	t.Parallel()
	url := user.PG.NewDatabase(t)
	rec := logrecorder.New(slog.LevelDebug)
	a, b := openReplica(t, url, user.WithStoreLogger(quiet)), openReplica(t, url, user.WithStoreLogger(slog.New(rec)))
	if _, err := a.SeedDemoUsers(context.Background()); err != nil {
		t.Fatal(err)
	}
	f := watch(t, b, time.Hour, 0)
	f.catchUp(t, 3)

	unblock := blockListeners(t, url)
	waitLog(t, rec, "listener could not reconnect")
	rename(t, a, "Alice while B is deaf")
	committed := time.Now()
	select {
	case ev := <-f.events:
		t.Fatalf("B's subscriber woke while B's listener was down: %v", ev)
	default:
	}
	unblock()
	ev := f.next(t, time.Minute)
	if ev.GetChange().GetSequence() != 4 {
		t.Fatalf("after the reconnection B's feed sent %v, want change 4", ev)
	}
	t.Logf("change 4 reached B's subscriber %v after its commit, the listener down meanwhile", time.Since(committed))
	waitLog(t, rec, "listener reconnected")

	// The new connection gets the next notification as the first did.
	rename(t, a, "Alice again")
	if got := f.next(t, stalenessBound).GetChange().GetSequence(); got != 5 {
		t.Fatalf("after the reconnection: change %d, want 5", got)
	}
}

// TestStalenessBoundHoldsWithoutTheListener: with B's listener down for
// good, a subscriber of B still gets A's change within the heartbeat
// interval (each heartbeat follows a read of the table), so the README's
// staleness bound does not rest on notifications.
func TestStalenessBoundHoldsWithoutTheListener(t *testing.T) {
	t.Parallel()
	url := user.PG.NewDatabase(t)
	a, b := openReplica(t, url, user.WithStoreLogger(quiet)), openReplica(t, url, user.WithStoreLogger(quiet))
	if _, err := a.SeedDemoUsers(context.Background()); err != nil {
		t.Fatal(err)
	}
	f := watch(t, b, user.DefaultHeartbeatInterval, 0)
	f.catchUp(t, 3)
	unblock := blockListeners(t, url)
	defer unblock()
	rename(t, a, "Alice unannounced")
	start := time.Now()
	for {
		ev := f.next(t, stalenessBound)
		if ev.GetChange().GetSequence() == 4 {
			break
		}
		if ev.GetHeartbeat().GetLatestSequence() >= 4 || time.Since(start) > stalenessBound {
			t.Fatalf("no change 4 within %v: %v", stalenessBound, ev)
		}
	}
	t.Logf("change 4 reached B's subscriber %v after its commit, with no listener", time.Since(start))
	if hb := f.next(t, stalenessBound).GetHeartbeat(); hb.GetLatestSequence() != 4 {
		t.Fatalf("after change 4: %v, want a heartbeat at 4", hb)
	}
}
