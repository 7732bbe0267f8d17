package throttle

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// size returns the number of tracked keys, checking that the map and the
// list agree.
func (l *Limiter) size(tb testing.TB) int {
	tb.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.keys) != l.order.Len() {
		tb.Fatalf("map has %d keys, list %d", len(l.keys), l.order.Len())
	}
	return len(l.keys)
}

func mustAllow(tb testing.TB, l *Limiter, key string, now time.Time) {
	tb.Helper()
	if ok, retry := l.Allow(key, now); !ok || retry != 0 {
		tb.Fatalf("Allow(%q, t0+%v) = %v, %v; want true, 0", key, now.Sub(t0), ok, retry)
	}
}

func mustRefuse(tb testing.TB, l *Limiter, key string, now time.Time, wantRetry time.Duration) {
	tb.Helper()
	if ok, retry := l.Allow(key, now); ok || retry != wantRetry {
		tb.Fatalf("Allow(%q, t0+%v) = %v, %v; want false, %v", key, now.Sub(t0), ok, retry, wantRetry)
	}
}

func TestLockoutAfterMaxFailures(t *testing.T) {
	t.Parallel()
	l := New(3, time.Minute, 100)
	mustAllow(t, l, "alice", t0)
	l.Failure("alice", t0)
	l.Failure("alice", t0.Add(10*time.Second))
	mustAllow(t, l, "alice", t0.Add(20*time.Second))
	l.Failure("alice", t0.Add(20*time.Second))
	// Locked until the first failure leaves the window, at t0+1m.
	mustRefuse(t, l, "alice", t0.Add(20*time.Second), 40*time.Second)
	mustRefuse(t, l, "alice", t0.Add(59*time.Second), time.Second)
}

func TestUnlockAfterWindow(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	l.Failure("alice", t0)
	l.Failure("alice", t0.Add(30*time.Second))
	mustRefuse(t, l, "alice", t0.Add(30*time.Second), 30*time.Second)
	// Sliding log: at t0+1m only one failure is within the window.
	mustAllow(t, l, "alice", t0.Add(time.Minute))
	// A new failure at t0+1m makes two within the window again, until the
	// one at t0+30s leaves it at t0+1m30s.
	l.Failure("alice", t0.Add(time.Minute))
	mustRefuse(t, l, "alice", t0.Add(time.Minute), 30*time.Second)
	mustAllow(t, l, "alice", t0.Add(90*time.Second))
	mustAllow(t, l, "alice", t0.Add(time.Hour))
	if n := l.size(t); n != 0 {
		t.Errorf("size after every failure expired = %d, want 0", n)
	}
}

func TestSlidingLogHasNoBoundaryBurst(t *testing.T) {
	t.Parallel()
	// A fixed window starting at t0 would reset at t0+1m and allow three
	// more failures right after the three at t0+59s.
	l := New(3, time.Minute, 100)
	l.Failure("alice", t0)
	for i := range 2 {
		now := t0.Add(59*time.Second + time.Duration(i)*time.Millisecond)
		mustAllow(t, l, "alice", now)
		l.Failure("alice", now)
	}
	now := t0.Add(time.Minute)
	mustAllow(t, l, "alice", now) // the failure at t0 has left the window
	l.Failure("alice", now)
	mustRefuse(t, l, "alice", now, 59*time.Second)
}

func TestFailuresWhileLockedExtendLockout(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	l.Failure("alice", t0)
	l.Failure("alice", t0.Add(time.Second))
	l.Failure("alice", t0.Add(50*time.Second))
	// The two most recent failures, at 1s and 50s, keep it locked until 1m1s.
	mustRefuse(t, l, "alice", t0.Add(time.Minute), time.Second)
	mustAllow(t, l, "alice", t0.Add(61*time.Second))
}

func TestReset(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	l.Failure("alice", t0)
	l.Failure("alice", t0)
	mustRefuse(t, l, "alice", t0, time.Minute)
	l.Reset("alice")
	mustAllow(t, l, "alice", t0)
	if n := l.size(t); n != 0 {
		t.Errorf("size after Reset = %d, want 0", n)
	}
	l.Reset("nobody") // no-op
	// The count starts again from zero.
	l.Failure("alice", t0)
	mustAllow(t, l, "alice", t0)
}

func TestKeysAreIndependent(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	l.Failure("alice", t0)
	l.Failure("alice", t0)
	l.Failure("bob", t0)
	mustRefuse(t, l, "alice", t0, time.Minute)
	mustAllow(t, l, "bob", t0)
	mustAllow(t, l, "carol", t0)
	l.Reset("bob")
	mustRefuse(t, l, "alice", t0, time.Minute)
	l.Reset("alice")
	l.Failure("bob", t0)
	mustAllow(t, l, "bob", t0)
}

func TestMaxKeysBound(t *testing.T) {
	t.Parallel()
	const maxKeys = 50
	l := New(3, time.Hour, maxKeys)
	for i := range 10 * maxKeys {
		key := fmt.Sprint("key-", i)
		l.Failure(key, t0.Add(time.Duration(i)*time.Millisecond))
		l.Failure(key, t0.Add(time.Duration(i)*time.Millisecond))
		if n := l.size(t); n > maxKeys {
			t.Fatalf("after %d keys: size = %d, want <= %d", i+1, n, maxKeys)
		}
	}
	if n := l.size(t); n != maxKeys {
		t.Errorf("size = %d, want %d", n, maxKeys)
	}
}

func TestEvictionPrefersExpiredThenOldest(t *testing.T) {
	t.Parallel()
	l := New(1, time.Minute, 3)
	l.Failure("old", t0)
	l.Failure("a", t0.Add(30*time.Second))
	l.Failure("b", t0.Add(40*time.Second))
	l.Failure("old", t0.Add(50*time.Second)) // now the most recently failed
	// Full and nothing expired: "a", the least recently failed, is evicted.
	now := t0.Add(55 * time.Second)
	l.Failure("c", now)
	mustAllow(t, l, "a", now)
	mustRefuse(t, l, "old", now, 55*time.Second)
	mustRefuse(t, l, "b", now, 45*time.Second)
	mustRefuse(t, l, "c", now, 60*time.Second)
	assertKeys(t, l, "b", "old", "c")

	// At t0+1m51s "b" and "old" have expired but "c" has not: new keys
	// replace the expired ones and "c" keeps its lockout.
	now = t0.Add(111 * time.Second)
	l.Failure("d", now)
	l.Failure("e", now)
	assertKeys(t, l, "c", "d", "e")
	mustRefuse(t, l, "c", now, 4*time.Second)
}

// assertKeys checks the tracked keys, from least to most recently failed.
func assertKeys(tb testing.TB, l *Limiter, want ...string) {
	tb.Helper()
	l.mu.Lock()
	var got []string
	for el := l.order.Front(); el != nil; el = el.Next() {
		got = append(got, el.Value.(*entry).key)
	}
	l.mu.Unlock()
	if fmt.Sprint(got) != fmt.Sprint(want) || l.size(tb) != len(want) {
		tb.Errorf("tracked keys = %v, want %v", got, want)
	}
}

func TestOutOfRangeArguments(t *testing.T) {
	t.Parallel()
	cases := map[string]*Limiter{
		"New(0, 0, 0)":    New(0, 0, 0),
		"New(-1, -1, -1)": New(-1, -time.Second, -1),
		"zero Limiter":    new(Limiter),
	}
	for name, l := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			mustAllow(t, l, "alice", t0)
			l.Failure("alice", t0)
			// One failure locks the key, and a window <= 0 never expires.
			if ok, _ := l.Allow("alice", t0.Add(100*365*24*time.Hour)); ok {
				t.Error("Allow after one failure = true, want false")
			}
			l.Failure("bob", t0)
			if n := l.size(t); n != 1 {
				t.Errorf("size = %d, want 1 (maxKeys clamped to 1)", n)
			}
			l.Reset("bob")
			mustAllow(t, l, "bob", t0)
		})
	}
}

func TestOutOfOrderTimes(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	l.Failure("alice", t0.Add(10*time.Second))
	l.Failure("alice", t0) // a concurrent caller's slightly older clock reading
	mustRefuse(t, l, "alice", t0.Add(10*time.Second), 50*time.Second)
	// A time before every failure: still refused, never a negative or
	// overflowing retryAfter.
	mustRefuse(t, l, "alice", t0.Add(-time.Hour), time.Minute)
	// The newer failure replaces the oldest one (at t0), not the latest.
	l.Failure("alice", t0.Add(20*time.Second))
	mustRefuse(t, l, "alice", t0.Add(20*time.Second), 50*time.Second)
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	const maxKeys = 64
	l := New(5, time.Second, maxKeys)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				key := fmt.Sprint("key-", (g*7+i)%200)
				now := t0.Add(time.Duration(i) * time.Millisecond)
				if ok, retry := l.Allow(key, now); !ok && retry <= 0 {
					t.Errorf("Allow(%q) = false, %v; want a positive retryAfter", key, retry)
				}
				l.Failure(key, now)
				if i%17 == 0 {
					l.Reset(key)
				}
			}
		})
	}
	wg.Wait()
	if n := l.size(t); n > maxKeys {
		t.Errorf("size = %d, want <= %d", n, maxKeys)
	}
}
