package order_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
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
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/user"
)

// openFeeds counts the WatchUserChanges streams a server has open.
type openFeeds struct{ n atomic.Int64 }

func (o *openFeeds) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (o *openFeeds) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (o *openFeeds) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if conn.Spec().Procedure != userv1connect.UserServiceWatchUserChangesProcedure {
			return next(ctx, conn)
		}
		o.n.Add(1)
		defer o.n.Add(-1)
		return next(ctx, conn)
	}
}

// userReplica is one replica of the user service, on the shared database.
type userReplica struct {
	store *user.Store
	srv   *rpctest.Server
	feeds *openFeeds
}

// TestFeedFailsOverToAnotherUserReplica: two user service replicas share a
// PostgreSQL database; the order service is given both. When the replica
// serving its change feed stops, the subscriber resumes on the other after
// the last change it applied: it applies every change — those committed
// while it was away, then the live ones — once each and in order, with no
// reset.
func TestFeedFailsOverToAnotherUserReplica(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ca := certstest.NewCA(t)
	db := order.PG.NewDatabase(t)
	keys, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	authorizer := allowList(t, map[string]authz.Rule{
		userv1connect.UserServiceWatchUserChangesProcedure: {Workloads: []string{orderSvcID}},
	})
	fast := password.Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}
	quiet := slog.New(slog.DiscardHandler)
	var replicas []*userReplica
	for range 2 {
		store, err := user.OpenStore(ctx, db, user.WithStoreLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = store.Close() })
		logger, logs := rpctest.NewLogger(t)
		feeds := &openFeeds{}
		srv, err := user.NewServer(user.Config{
			Source: ca.Source(ca.Server("/svc/user")), Store: store, Authorizer: authorizer, Keys: keys,
			PasswordParams: &fast, Logger: logger, ServerOptions: []rpc.ServerOption{rpc.WithInterceptors(feeds)},
		})
		if err != nil {
			t.Fatal(err)
		}
		loopCtx, stopLoops := context.WithCancel(ctx)
		loopsDone := make(chan struct{})
		go func() { defer close(loopsDone); _ = srv.Run(loopCtx) }()
		t.Cleanup(func() { stopLoops(); <-loopsDone })
		replicas = append(replicas, &userReplica{store: store, srv: rpctest.Serve(t, srv.Server, logs), feeds: feeds})
	}
	if _, err := replicas[0].store.SeedDemoUsers(ctx); err != nil {
		t.Fatal(err)
	}

	orderStore, err := order.OpenStore(ctx, filepath.Join(t.TempDir(), "orders.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orderStore.Close() })
	var (
		mu      sync.Mutex
		applied []int64
		resets  int
	)
	orderCtx, stop := context.WithCancel(ctx)
	logger, _ := rpctest.NewLogger(t)
	srv, err := order.NewServer(order.Config{
		Source: ca.Source(ca.Server("/svc/order")), Store: orderStore, Authorizer: allowList(t, nil), Logger: logger,
		UserURL: replicas[0].srv.URL + "," + replicas[1].srv.URL,
		UserCache: order.UserCacheOptions{
			// Generous: a loaded machine must not make the feed look silent.
			Liveness:   30 * time.Second,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			Observe: func(ev order.UserCacheEvent) {
				mu.Lock()
				defer mu.Unlock()
				if ev.Change != nil {
					applied = append(applied, ev.Change.GetSequence())
				}
				if ev.Reset != nil {
					resets++
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Run(orderCtx) }()
	// Before the user replicas stop (cleanups run last-in first-out).
	t.Cleanup(func() { stop(); <-srv.UserCache.Done() })
	cache := srv.UserCache

	latest := func() int64 {
		t.Helper()
		_, l, err := replicas[0].store.ChangeBounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	rename := func(s *user.Store, n int) {
		t.Helper()
		for i := range n {
			if _, err := s.Update(ctx, &userv1.User{Id: "alice", DisplayName: fmt.Sprintf("Alice %d", i)}, []string{"display_name"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// LastSequence moves as a change is applied, before Observe is called
	// with it: wait for the record too.
	observed := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		if len(applied) == 0 {
			return 0
		}
		return applied[len(applied)-1]
	}
	caughtUp := func(what string, on *userReplica) {
		t.Helper()
		want := latest()
		rpctest.WaitFor(t, what, func() bool {
			s := cache.Stats()
			return s.Live && s.LastSequence == want && observed() == want && on.feeds.n.Load() == 1
		})
	}

	rpctest.WaitFor(t, "the feed on one replica", func() bool {
		return replicas[0].feeds.n.Load()+replicas[1].feeds.n.Load() == 1
	})
	first, second := replicas[0], replicas[1]
	if second.feeds.n.Load() == 1 {
		first, second = second, first
	}
	rename(first.store, 3)
	caughtUp("the changes made before the stop", first)

	if err := first.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	rename(second.store, 5) // while the subscriber moves
	caughtUp("the changes made during the move, on the second replica", second)
	rename(second.store, 3)
	caughtUp("the changes made after the move", second)

	mu.Lock()
	defer mu.Unlock()
	want := make([]int64, latest())
	for i := range want {
		want[i] = int64(i + 1)
	}
	t.Logf("applied %d changes, %d reconnections, %d resets", len(applied), cache.Stats().Reconnects, resets)
	if !slices.Equal(applied, want) || resets != 0 {
		t.Fatalf("applied %v with %d resets, want %v and none", applied, resets, want)
	}
	if n := first.feeds.n.Load(); n != 0 {
		t.Fatalf("the stopped replica still holds %d feeds", n)
	}
}
