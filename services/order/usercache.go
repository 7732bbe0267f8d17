package order

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// Defaults of UserCacheOptions.
const (
	DefaultUserCacheSize     = 10000
	DefaultUserCacheMaxAge   = 10 * time.Minute
	DefaultUserCacheLiveness = 3 * time.Second
	DefaultFeedMinBackoff    = 100 * time.Millisecond
	DefaultFeedMaxBackoff    = 10 * time.Second
)

// UserCacheOptions configures the order service's cache of users. The zero
// value is the default.
type UserCacheOptions struct {
	// Size is the largest number of users kept; the least recently used is
	// evicted (default DefaultUserCacheSize).
	Size int
	// MaxAge is how long an entry may be served without any change to its
	// user (default DefaultUserCacheMaxAge). It is a backstop, not the
	// freshness mechanism: the change feed is.
	MaxAge time.Duration
	// Liveness is how long after the feed's last heartbeat the cache still
	// serves entries, and how long the feed may stay silent before it is
	// dropped and reconnected (default DefaultUserCacheLiveness). It bounds
	// how stale a served user can be when the feed fails, silently or not;
	// keep it a few times the user service's heartbeat interval (1s by
	// default).
	Liveness time.Duration
	// MinBackoff and MaxBackoff bound the delay before a reconnection
	// (defaults DefaultFeedMinBackoff, DefaultFeedMaxBackoff). The delay
	// doubles after every failed attempt, starts over after a stream that
	// caught up, and is jittered: a random point in its upper half.
	MinBackoff, MaxBackoff time.Duration
	// Observe, when set, is called after each change or reset from the feed
	// is applied, on the feed's goroutine; it must not block. For metrics
	// and tests.
	Observe func(UserCacheEvent)
	// Logger receives the feed's state changes and the invalidations
	// (default slog.Default()).
	Logger *slog.Logger
}

// UserCacheEvent is a change or a reset from the feed, as applied.
type UserCacheEvent struct {
	// Change is the change applied, or nil.
	Change *userv1.UserChange
	// Reset is the reset applied (the cache was flushed), or nil.
	Reset *userv1.WatchReset
	// Dropped reports whether the change dropped a cached entry.
	Dropped bool
	// Applied is when it was applied.
	Applied time.Time
}

// UserCacheStats are the cache's counters since it was created.
type UserCacheStats struct {
	// Hits are lookups answered from the cache; Misses lookups that asked
	// the user service while the cache was live; Bypasses lookups that asked
	// it because the cache was not (feed down or catching up).
	Hits, Misses, Bypasses uint64
	// Invalidations are changes applied (each invalidates its user's
	// entry, cached or not); Resets are resets applied (each flushes the
	// cache); Reconnects are subscriptions after the first.
	Invalidations, Resets, Reconnects uint64
	// LastSequence is the sequence of the last change applied: where the
	// next subscription resumes.
	LastSequence int64
	// Entries is the number of users cached now; Live whether the cache
	// serves them now.
	Entries int
	Live    bool
}

// UserCache is the order service's bounded, in-memory cache of users, kept
// fresh by the user service's change feed (WatchUserChanges; see Run).
//
// While the feed is down — from the moment its stream ends, or Liveness
// after its last heartbeat if it fails without ending — and while it
// catches up after a reconnection, the cache is bypassed: every lookup asks
// the user service, and nothing is cached. So an order is not accepted on
// cached data while the user service is known to be down. The cache serves
// only within Liveness (3s by default) of the feed's last heartbeat, and a
// heartbeat arrives only after every change committed before it was sent;
// so a user changed at time T is never served as it was before T later
// than T + Liveness plus the heartbeat's network delay, even when the feed
// fails silently, and in normal operation no later than the change's
// invalidation (milliseconds). Entries are kept across an outage: the
// changes missed meanwhile are replayed, from the last sequence applied,
// before the cache serves again.
//
// A lookup that misses takes a lease on the user's entry before it asks the
// user service; an invalidation (or a reset) that arrives before the answer
// cancels the lease, and the answer, possibly older than the change, is
// then not cached.
type UserCache struct {
	opts    UserCacheOptions
	log     *slog.Logger
	done    chan struct{}
	running atomic.Bool

	mu        sync.Mutex
	entries   map[string]*list.Element // of *cacheEntry
	lru       *list.List               // front: most recently used
	liveUntil time.Time                // zero while the feed is down or catching up
	lastSeq   int64
	leases    uint64
	stats     UserCacheStats
}

type cacheEntry struct {
	id      string
	user    *userv1.User // nil while a lookup holds the lease
	lease   uint64
	fetched time.Time
}

// NewUserCache returns an empty cache, not live until Run has caught up
// with the feed.
func NewUserCache(opts UserCacheOptions) (*UserCache, error) {
	d := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if opts.Size == 0 {
		opts.Size = DefaultUserCacheSize
	}
	d(&opts.MaxAge, DefaultUserCacheMaxAge)
	d(&opts.Liveness, DefaultUserCacheLiveness)
	d(&opts.MinBackoff, DefaultFeedMinBackoff)
	d(&opts.MaxBackoff, DefaultFeedMaxBackoff)
	switch {
	case opts.Size < 0:
		return nil, fmt.Errorf("order: user cache: size %d is negative", opts.Size)
	case opts.MaxAge < 0, opts.Liveness < 0, opts.MinBackoff < 0, opts.MaxBackoff < 0:
		return nil, fmt.Errorf("order: user cache: negative duration in %+v", opts)
	case opts.MinBackoff > opts.MaxBackoff:
		return nil, fmt.Errorf("order: user cache: min backoff %s above max backoff %s", opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &UserCache{
		opts:    opts,
		log:     opts.Logger,
		done:    make(chan struct{}),
		entries: map[string]*list.Element{},
		lru:     list.New(),
	}, nil
}

// Stats returns the counters and the last applied sequence.
func (c *UserCache) Stats() UserCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.LastSequence = c.lastSeq
	s.Entries = c.lru.Len()
	s.Live = c.liveLocked(time.Now())
	return s
}

// Done is closed when Run has returned.
func (c *UserCache) Done() <-chan struct{} { return c.done }

func (c *UserCache) liveLocked(now time.Time) bool { return now.Before(c.liveUntil) }

// Get returns user id from the cache when it is live and holds it, and
// otherwise calls fetch, caching a user it returns if the cache is live and
// no change to the user arrived meanwhile. The returned user is shared: do
// not modify it.
func (c *UserCache) Get(ctx context.Context, id string, fetch func(context.Context) (*userv1.User, error)) (*userv1.User, error) {
	now := time.Now()
	c.mu.Lock()
	if !c.liveLocked(now) {
		c.stats.Bypasses++
		c.mu.Unlock()
		return fetch(ctx)
	}
	if el, ok := c.entries[id]; ok {
		e := el.Value.(*cacheEntry)
		if e.user != nil && now.Sub(e.fetched) < c.opts.MaxAge {
			c.stats.Hits++
			c.lru.MoveToFront(el)
			u := e.user
			c.mu.Unlock()
			return u, nil
		}
	}
	c.stats.Misses++
	c.leases++
	lease := c.leases
	c.putLocked(&cacheEntry{id: id, lease: lease, fetched: now})
	c.mu.Unlock()

	u, err := fetch(ctx)

	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[id]
	if !ok || el.Value.(*cacheEntry).lease != lease {
		return u, err // invalidated, flushed or taken over meanwhile
	}
	if err != nil || u.GetId() != id || !c.liveLocked(time.Now()) {
		c.removeLocked(el)
		return u, err
	}
	el.Value.(*cacheEntry).user = u
	return u, err
}

// putLocked adds or replaces e, evicting the least recently used entries
// beyond the size.
func (c *UserCache) putLocked(e *cacheEntry) {
	if el, ok := c.entries[e.id]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	c.entries[e.id] = c.lru.PushFront(e)
	for c.lru.Len() > c.opts.Size {
		c.removeLocked(c.lru.Back())
	}
}

func (c *UserCache) removeLocked(el *list.Element) {
	c.lru.Remove(el)
	delete(c.entries, el.Value.(*cacheEntry).id)
}

func (c *UserCache) flushLocked() {
	c.entries = map[string]*list.Element{}
	c.lru.Init()
}

// position is the sequence a subscription resumes after.
func (c *UserCache) position() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastSeq
}

// applyChange invalidates the changed user. A change that does not follow
// the last one applied (sequences are consecutive; the server announces a
// gap with a reset) flushes the cache: something was missed.
func (c *UserCache) applyChange(ch *userv1.UserChange) (UserCacheEvent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq := ch.GetSequence()
	if seq <= c.lastSeq {
		return UserCacheEvent{}, false // already applied
	}
	ev := UserCacheEvent{Change: ch, Applied: time.Now()}
	if seq != c.lastSeq+1 {
		c.log.Warn("user change feed skipped sequences without a reset; flushing the user cache",
			"after_sequence", c.lastSeq, "sequence", seq)
		c.flushLocked()
		ev.Dropped = true
	} else if el, ok := c.entries[ch.GetUserId()]; ok {
		ev.Dropped = el.Value.(*cacheEntry).user != nil
		c.removeLocked(el)
	}
	c.lastSeq = seq
	c.stats.Invalidations++
	return ev, true
}

// applyReset flushes the cache: changes after the last one applied are lost.
func (c *UserCache) applyReset(r *userv1.WatchReset) UserCacheEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushLocked()
	c.lastSeq = max(r.GetOldestSequence()-1, 0)
	c.stats.Resets++
	return UserCacheEvent{Reset: r, Applied: time.Now()}
}

// applyHeartbeat makes the cache live for Liveness: the server says every
// change up to its latest sequence has been sent. If that is not the last
// one applied, the two disagree about the history, and the cache is
// flushed.
func (c *UserCache) applyHeartbeat(hb *userv1.WatchHeartbeat) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if latest := hb.GetLatestSequence(); latest != c.lastSeq {
		c.log.Warn("user change feed heartbeat disagrees with the changes applied; flushing the user cache",
			"last_sequence", c.lastSeq, "latest_sequence", latest)
		c.flushLocked()
		c.lastSeq = latest
	}
	c.liveUntil = time.Now().Add(c.opts.Liveness)
}

// down stops serving from the cache until the feed has caught up again (or
// for good, once Run has returned). Entries are kept.
func (c *UserCache) down() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.liveUntil = time.Time{}
}

// cachedDirectory is a UserDirectory that looks users up in a UserCache
// before it asks the user service.
type cachedDirectory struct {
	cache *UserCache
	next  UserDirectory
}

// Directory returns a UserDirectory answering GetUser from c, and asking
// next on a miss or while c is not live.
func (c *UserCache) Directory(next UserDirectory) UserDirectory {
	return cachedDirectory{cache: c, next: next}
}

func (d cachedDirectory) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	u, err := d.cache.Get(ctx, req.GetId(), func(ctx context.Context) (*userv1.User, error) {
		res, err := d.next.GetUser(ctx, req)
		return res.GetUser(), err
	})
	if err != nil {
		return nil, err
	}
	return &userv1.GetUserResponse{User: u}, nil
}
