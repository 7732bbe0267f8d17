package e2e_test

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/user"
)

// userEngine and orderEngine are the services' policies, compiled and
// tested once for every fleet in the package (the rego tests take seconds
// under the race detector). An Engine is safe for concurrent use, and the
// decision log is written by each server's own interceptor, so the servers
// do not share their logs.
var (
	userEngine  = sync.OnceValues(func() (*policy.Engine, error) { return quietEngine(user.Policy()) })
	orderEngine = sync.OnceValues(func() (*policy.Engine, error) { return quietEngine(order.Policy()) })
)

func quietEngine(layer fs.FS) (*policy.Engine, error) {
	b, err := policy.LoadFS(layer, "layer")
	if err != nil {
		return nil, err
	}
	return policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.DiscardHandler)))
}

// Fleet is one user service and several replicas of the order service (the
// same code, each with its own database and port), all subscribed to the
// user change feed, over mTLS on loopback with the default policies. The
// user service can be stopped and started again at the same address,
// keeping its database and keys.
type Fleet struct {
	CA                    *certstest.CA
	UserStore             *user.Store
	Users                 *rpctest.Server // the running user server (nil while stopped)
	UserSrv               *user.Server
	Replicas              []*Replica
	certs                 map[string]*certs.Issued
	keys                  *token.KeySet
	userAuthz, orderAuthz *policy.Engine
	opts                  FleetOptions
	userAddr              string
}

// FleetOptions shape a Fleet; zero values get test defaults.
type FleetOptions struct {
	Replicas  int            // default 3
	Retention user.Retention // the change history's (default: the store's)
	// Cache is every replica's cache configuration. Liveness defaults to 30s
	// here, so that a loaded test machine does not make a cache bypass
	// lookups the test expects it to answer; backoffs to 20ms–200ms.
	Cache order.UserCacheOptions
	// OrderOptions are every order replica's extra server options.
	OrderOptions []rpc.ServerOption
}

// Replica is one order service replica and what its cache applied.
type Replica struct {
	Srv    *order.Server
	Server *rpctest.Server
	Store  *order.Store
	stop   context.CancelFunc

	mu      sync.Mutex
	applied []int64 // sequences of the changes applied, in order
	resets  []*userv1.WatchReset
	// latencies are, for each change applied, the time from its commit (its
	// time, taken in the transaction just before COMMIT) to its application.
	latencies []time.Duration
}

// Applied returns the sequences the replica's cache applied, in order.
func (r *Replica) Applied() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied)
}

// Resets returns the resets the replica's cache applied.
func (r *Replica) Resets() []*userv1.WatchReset {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.resets)
}

func (r *Replica) observe(ev order.UserCacheEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Change != nil {
		r.applied = append(r.applied, ev.Change.GetSequence())
		r.latencies = append(r.latencies, ev.Applied.Sub(ev.Change.GetTime().AsTime()))
	}
	if ev.Reset != nil {
		r.resets = append(r.resets, ev.Reset)
	}
}

// StartFleet starts the user service with the demo users and opts.Replicas
// order replicas, and waits until every replica's cache is live.
func StartFleet(t testing.TB, opts FleetOptions) *Fleet {
	t.Helper()
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	if opts.Cache.Liveness == 0 {
		opts.Cache.Liveness = 30 * time.Second
	}
	if opts.Cache.MinBackoff == 0 {
		opts.Cache.MinBackoff, opts.Cache.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	ctx := context.Background()
	ca := certstest.NewCA(t)
	f := &Fleet{CA: ca, opts: opts, userAddr: "127.0.0.1:0", certs: map[string]*certs.Issued{
		"cli": ca.Client("/client/cli"), "order": ca.Server("/svc/order"), "intruder": ca.Server("/svc/intruder"),
		"user": ca.Server("/svc/user"),
	}}
	var err error
	if f.UserStore, err = user.OpenStore(ctx, t.TempDir()+"/users.db"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.UserStore.Close() })
	if _, err := f.UserStore.SeedDemoUsers(ctx); err != nil {
		t.Fatal(err)
	}
	for id, pw := range passwords {
		hash, err := password.Hash(pw, fastHashes)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.UserStore.SetPasswordHash(ctx, id, hash); err != nil {
			t.Fatal(err)
		}
	}
	if f.keys, err = token.NewKeySet(token.AlgEdDSA); err != nil {
		t.Fatal(err)
	}
	if f.userAuthz, err = userEngine(); err != nil {
		t.Fatal(err)
	}
	if f.orderAuthz, err = orderEngine(); err != nil {
		t.Fatal(err)
	}
	f.StartUsers(t)
	for range opts.Replicas {
		f.AddReplica(t)
	}
	f.WaitLive(t)
	return f
}

// StartUsers starts the user service (again), at the address it had.
func (f *Fleet) StartUsers(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	logger, logs := rpctest.NewLogger(t)
	srv, err := user.NewServer(user.Config{
		Source: f.CA.Source(f.certs["user"]), Store: f.UserStore, Authorizer: f.userAuthz,
		Keys: f.keys, PasswordParams: &fastHashes, Logger: logger, ChangeRetention: f.opts.Retention,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.UserSrv = srv
	runLoops(t, ctx, srv.Run)
	f.Users = rpctest.ServeAt(t, srv.Server, logs, f.userAddr)
	f.userAddr = f.Users.Addr
}

// StopUsers drains and stops the user service.
func (f *Fleet) StopUsers(t testing.TB) {
	t.Helper()
	if err := f.Users.Stop(); err != nil {
		t.Fatalf("stop the user service: %v", err)
	}
}

// AddReplica starts one more order replica, with its own database.
func (f *Fleet) AddReplica(t testing.TB) *Replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Replica{stop: cancel}
	var err error
	if r.Store, err = order.OpenStore(ctx, t.TempDir()+"/orders.db"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Store.Close() })
	logger, logs := rpctest.NewLogger(t)
	cacheOpts := f.opts.Cache
	cacheOpts.Observe = r.observe
	if r.Srv, err = order.NewServer(order.Config{
		Source: f.CA.Source(f.certs["order"]), Store: r.Store, Authorizer: f.orderAuthz,
		UserURL: f.Users.URL, Logger: logger, UserCache: cacheOpts, ServerOptions: f.opts.OrderOptions,
	}); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the subscriber stops (and is waited
	// for) after the replica's server, and before the user service.
	go func() { _ = r.Srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-r.Srv.UserCache.Done() })
	r.Server = rpctest.Serve(t, r.Srv.Server, logs)
	f.Replicas = append(f.Replicas, r)
	return r
}

// System returns the fleet seen through replica i, for the Caller helpers.
func (f *Fleet) System(i int) *System {
	return &System{CA: f.CA, Users: f.Users, Orders: f.Replicas[i].Server, Certs: f.certs}
}

// WaitLive waits until every replica's cache is live.
func (f *Fleet) WaitLive(t testing.TB) {
	t.Helper()
	for i, r := range f.Replicas {
		rpctest.WaitFor(t, fmt.Sprintf("replica %d is live", i), func() bool { return r.Srv.UserCache.Stats().Live })
	}
}

// WaitSequence waits until every replica has applied seq, and its record
// (Applied) holds it: the cache's LastSequence moves as a change is
// applied, before Observe is called with it.
func (f *Fleet) WaitSequence(t testing.TB, seq int64) {
	t.Helper()
	for i, r := range f.Replicas {
		rpctest.WaitFor(t, fmt.Sprintf("replica %d applied sequence %d", i, seq), func() bool {
			return r.Srv.UserCache.Stats().LastSequence >= seq && r.lastApplied() >= seq
		})
	}
}

// lastApplied is the sequence of the last change the replica's record
// holds (0 if none).
func (r *Replica) lastApplied() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.applied) == 0 {
		return 0
	}
	return r.applied[len(r.applied)-1]
}

// Latest returns the newest sequence in the user store.
func (f *Fleet) Latest(t testing.TB) int64 {
	t.Helper()
	_, latest, err := f.UserStore.ChangeBounds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return latest
}

// seqs returns the sequences from..to.
func seqs(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}
