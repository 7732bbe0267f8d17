package throttle

import (
	"fmt"
	"sync"
	"sync/atomic"
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

// mustReserve takes a slot for key at now, failing the test if it is
// refused.
func mustReserve(tb testing.TB, l *Limiter, key string, now time.Time) *Reservation {
	tb.Helper()
	r, retry := l.Reserve(key, now)
	if r == nil || retry != 0 {
		tb.Fatalf("Reserve(%q, t0+%v) = %v, %v; want a reservation, 0", key, now.Sub(t0), r, retry)
	}
	return r
}

// mustAllow checks that an attempt for key is admitted at now, and settles
// it as a success, which leaves the key as it was.
func mustAllow(tb testing.TB, l *Limiter, key string, now time.Time) {
	tb.Helper()
	mustReserve(tb, l, key, now).Release()
}

func mustRefuse(tb testing.TB, l *Limiter, key string, now time.Time, wantRetry time.Duration) {
	tb.Helper()
	if r, retry := l.Reserve(key, now); r != nil || retry != wantRetry {
		tb.Fatalf("Reserve(%q, t0+%v) = %v, %v; want nil, %v", key, now.Sub(t0), r, retry, wantRetry)
	}
}

// fail records a failed attempt for key at now, which must be admitted.
func fail(tb testing.TB, l *Limiter, key string, now time.Time) {
	tb.Helper()
	mustReserve(tb, l, key, now).Fail(now)
}

func TestLockoutAfterMaxFailures(t *testing.T) {
	t.Parallel()
	l := New(3, time.Minute, 100)
	fail(t, l, "alice", t0)
	fail(t, l, "alice", t0.Add(10*time.Second))
	mustAllow(t, l, "alice", t0.Add(20*time.Second))
	fail(t, l, "alice", t0.Add(20*time.Second))
	// Locked until the first failure leaves the window, at t0+1m.
	mustRefuse(t, l, "alice", t0.Add(20*time.Second), 40*time.Second)
	mustRefuse(t, l, "alice", t0.Add(59*time.Second), time.Second)
	mustAllow(t, l, "alice", t0.Add(time.Minute))
}

func TestUnlockAfterWindow(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	fail(t, l, "alice", t0)
	fail(t, l, "alice", t0.Add(30*time.Second))
	mustRefuse(t, l, "alice", t0.Add(30*time.Second), 30*time.Second)
	// Sliding log: at t0+1m only one failure is within the window.
	mustAllow(t, l, "alice", t0.Add(time.Minute))
	// A new failure at t0+1m makes two within the window again, until the
	// one at t0+30s leaves it at t0+1m30s.
	fail(t, l, "alice", t0.Add(time.Minute))
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
	fail(t, l, "alice", t0)
	for i := range 2 {
		fail(t, l, "alice", t0.Add(59*time.Second+time.Duration(i)*time.Millisecond))
	}
	now := t0.Add(time.Minute)
	fail(t, l, "alice", now) // the failure at t0 has left the window
	mustRefuse(t, l, "alice", now, 59*time.Second)
}

// TestConcurrentReservationsNeverExceedMax: attempts in flight hold their
// slots, so however many arrive at once, at most maxFailures are admitted
// until some settle — the race a separate check-then-record would lose.
func TestConcurrentReservationsNeverExceedMax(t *testing.T) {
	t.Parallel()
	const maxFailures = 5
	l := New(maxFailures, time.Minute, 100)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted []*Reservation
		refused  atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			for range 50 {
				r, retry := l.Reserve("bob", t0)
				if r == nil {
					if retry != time.Minute {
						t.Errorf("refused with retryAfter %v, want 1m (the in-flight attempts counted as failures at now)", retry)
					}
					refused.Add(1)
					continue
				}
				mu.Lock()
				admitted = append(admitted, r)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(admitted) != maxFailures || refused.Load() != 400-maxFailures {
		t.Fatalf("%d of 400 concurrent attempts admitted, %d refused; want %d admitted", len(admitted), refused.Load(), maxFailures)
	}
	// Two succeed: their slots are free again, the others' are not.
	admitted[0].Release()
	admitted[1].Release()
	second := []*Reservation{mustReserve(t, l, "bob", t0), mustReserve(t, l, "bob", t0)}
	mustRefuse(t, l, "bob", t0, time.Minute)
	// The rest fail: five failures, locked for the window.
	for _, r := range append(admitted[2:], second...) {
		r.Fail(t0.Add(time.Second))
	}
	mustRefuse(t, l, "bob", t0.Add(time.Second), time.Minute)
	mustAllow(t, l, "bob", t0.Add(61*time.Second))
}

// TestSuccessErasesNoFailure: a success frees its own slot only. Failures
// recorded before it, failures of attempts in flight beside it, and those
// attempts' slots all still count.
func TestSuccessErasesNoFailure(t *testing.T) {
	t.Parallel()
	l := New(4, time.Minute, 100)
	fail(t, l, "bob", t0)                 // recorded before the success
	guess := mustReserve(t, l, "bob", t0) // in flight beside it
	success := mustReserve(t, l, "bob", t0)
	late := mustReserve(t, l, "bob", t0) // settles after it
	success.Release()
	guess.Fail(t0.Add(time.Second))
	// Three slots taken: one failure at t0, one at t0+1s, one in flight.
	mustAllow(t, l, "bob", t0.Add(time.Second))
	fourth := mustReserve(t, l, "bob", t0.Add(time.Second))
	mustRefuse(t, l, "bob", t0.Add(time.Second), 59*time.Second)
	late.Fail(t0.Add(2 * time.Second))
	fourth.Fail(t0.Add(2 * time.Second))
	mustRefuse(t, l, "bob", t0.Add(2*time.Second), 58*time.Second)
}

func TestSettlingTwiceDoesNothing(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	r := mustReserve(t, l, "bob", t0)
	r.Fail(t0)
	r.Fail(t0)  // not a second failure
	r.Release() // does not free the failed slot
	other := mustReserve(t, l, "bob", t0)
	mustRefuse(t, l, "bob", t0, time.Minute)
	other.Release()
	other.Release() // does not free a slot it does not hold
	held := mustReserve(t, l, "bob", t0)
	mustRefuse(t, l, "bob", t0, time.Minute)
	held.Release()
	var none *Reservation
	none.Fail(t0) // a refused attempt's nil reservation: no panic
	none.Release()
}

// TestLateFailuresExtendLockout: a failure is recorded when it settles, so
// an attempt that was admitted before the key locked and fails later keeps
// it locked from then.
func TestLateFailuresExtendLockout(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	a, b := mustReserve(t, l, "alice", t0), mustReserve(t, l, "alice", t0)
	a.Fail(t0.Add(time.Second))
	b.Fail(t0.Add(50 * time.Second))
	// The failures at 1s and 50s keep it locked until 1m1s.
	mustRefuse(t, l, "alice", t0.Add(time.Minute), time.Second)
	mustAllow(t, l, "alice", t0.Add(61*time.Second))
}

func TestRetryAfterCountsAttemptsInFlight(t *testing.T) {
	t.Parallel()
	l := New(4, time.Minute, 100)
	fail(t, l, "alice", t0)
	fail(t, l, "alice", t0.Add(10*time.Second))
	fail(t, l, "alice", t0.Add(20*time.Second))
	r := mustReserve(t, l, "alice", t0.Add(30*time.Second))
	// Three failures and one attempt in flight: once it fails, the failure
	// at t0 must leave the window; were it to succeed, the key would be
	// admitted at once — the retry hint assumes the worse.
	mustRefuse(t, l, "alice", t0.Add(30*time.Second), 30*time.Second)
	r.Release()
	mustAllow(t, l, "alice", t0.Add(30*time.Second))
}

func TestReset(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	fail(t, l, "alice", t0)
	fail(t, l, "alice", t0)
	mustRefuse(t, l, "alice", t0, time.Minute)
	l.Reset("alice")
	mustAllow(t, l, "alice", t0)
	if n := l.size(t); n != 0 {
		t.Errorf("size after Reset = %d, want 0", n)
	}
	l.Reset("nobody") // no-op
	// The count starts again from zero.
	fail(t, l, "alice", t0)
	mustAllow(t, l, "alice", t0)
	// An attempt in flight keeps its slot across a Reset.
	held := mustReserve(t, l, "alice", t0)
	l.Reset("alice")
	mustAllow(t, l, "alice", t0)
	held2 := mustReserve(t, l, "alice", t0)
	mustRefuse(t, l, "alice", t0, time.Minute)
	held.Fail(t0)
	held2.Release()
	mustAllow(t, l, "alice", t0)
}

func TestKeysAreIndependent(t *testing.T) {
	t.Parallel()
	l := New(2, time.Minute, 100)
	fail(t, l, "alice", t0)
	fail(t, l, "alice", t0)
	fail(t, l, "bob", t0)
	mustRefuse(t, l, "alice", t0, time.Minute)
	mustAllow(t, l, "bob", t0)
	mustAllow(t, l, "carol", t0)
	l.Reset("bob")
	mustRefuse(t, l, "alice", t0, time.Minute)
	l.Reset("alice")
	fail(t, l, "bob", t0)
	mustAllow(t, l, "bob", t0)
}

func TestMaxKeysBound(t *testing.T) {
	t.Parallel()
	const maxKeys = 50
	l := New(3, time.Hour, maxKeys)
	for i := range 10 * maxKeys {
		key := fmt.Sprint("key-", i)
		now := t0.Add(time.Duration(i) * time.Millisecond)
		fail(t, l, key, now)
		fail(t, l, key, now)
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
	fail(t, l, "old", t0)
	fail(t, l, "a", t0.Add(30*time.Second))
	fail(t, l, "b", t0.Add(40*time.Second))
	l.Reset("old")
	fail(t, l, "old", t0.Add(50*time.Second)) // now the most recently used
	// Full and nothing expired: "a", the least recently used, is evicted.
	now := t0.Add(55 * time.Second)
	fail(t, l, "c", now)
	mustRefuse(t, l, "old", now, 55*time.Second)
	mustRefuse(t, l, "b", now, 45*time.Second)
	mustRefuse(t, l, "c", now, 60*time.Second)
	assertKeys(t, l, "b", "old", "c")

	// At t0+1m51s "b" and "old" have expired but "c" has not: new keys
	// replace the expired ones and "c" keeps its lockout.
	now = t0.Add(111 * time.Second)
	fail(t, l, "d", now)
	fail(t, l, "e", now)
	assertKeys(t, l, "c", "d", "e")
	mustRefuse(t, l, "c", now, 4*time.Second)
	// "a" was forgotten. Any attempt for an untracked key tracks it, so
	// this one evicts "c", the least recently used.
	mustAllow(t, l, "a", now)
	assertKeys(t, l, "d", "e")
}

// TestAttemptsInFlightAreNeverEvicted: evicting a key with an attempt in
// flight would forget its slot. A full Limiter evicts the least recently
// used idle key instead, and refuses a new key when none is idle.
func TestAttemptsInFlightAreNeverEvicted(t *testing.T) {
	t.Parallel()
	l := New(1, time.Minute, 2)
	a := mustReserve(t, l, "a", t0)
	fail(t, l, "b", t0.Add(time.Second))
	c := mustReserve(t, l, "c", t0.Add(2*time.Second)) // evicts b, not a
	assertKeys(t, l, "a", "c")
	mustRefuse(t, l, "a", t0.Add(2*time.Second), time.Minute)
	mustRefuse(t, l, "d", t0.Add(2*time.Second), fullRetry)
	if n := l.size(t); n != 2 {
		t.Errorf("size = %d, want 2", n)
	}
	// Long in flight, past the window: still tracked, still held.
	mustRefuse(t, l, "a", t0.Add(time.Hour), time.Minute)
	a.Fail(t0.Add(time.Hour))
	c.Release()
	mustAllow(t, l, "d", t0.Add(time.Hour))
	mustRefuse(t, l, "a", t0.Add(time.Hour), time.Minute)
}

// assertKeys checks the tracked keys, from least to most recently used.
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
			fail(t, l, "alice", t0)
			// One failure locks the key, and a window <= 0 never expires.
			if r, _ := l.Reserve("alice", t0.Add(100*365*24*time.Hour)); r != nil {
				t.Error("Reserve after one failure admitted, want refused")
			}
			fail(t, l, "bob", t0)
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
	a, b := mustReserve(t, l, "alice", t0), mustReserve(t, l, "alice", t0)
	a.Fail(t0.Add(10 * time.Second))
	b.Fail(t0) // a concurrent caller's slightly older clock reading
	mustRefuse(t, l, "alice", t0.Add(10*time.Second), 50*time.Second)
	// A time before every failure: still refused, never a negative or
	// overflowing retryAfter.
	mustRefuse(t, l, "alice", t0.Add(-time.Hour), time.Minute)
	// Once the failure at t0 has left the window, a new one replaces it,
	// not the one at t0+10s.
	fail(t, l, "alice", t0.Add(65*time.Second))
	mustRefuse(t, l, "alice", t0.Add(65*time.Second), 5*time.Second)
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	const maxKeys, maxFailures = 64, 5
	l := New(maxFailures, time.Second, maxKeys)
	var (
		wg sync.WaitGroup
		// inFlight counts the unsettled reservations per key, to check
		// that the limiter never admits more than maxFailures at once.
		mu       sync.Mutex
		inFlight = map[string]int{}
	)
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				key := fmt.Sprint("key-", (g*7+i)%200)
				now := t0.Add(time.Duration(i) * time.Millisecond)
				r, retry := l.Reserve(key, now)
				if r == nil {
					if retry <= 0 {
						t.Errorf("Reserve(%q) = nil, %v; want a positive retryAfter", key, retry)
					}
					continue
				}
				mu.Lock()
				inFlight[key]++
				if inFlight[key] > maxFailures {
					t.Errorf("%d attempts in flight for %q, want <= %d", inFlight[key], key, maxFailures)
				}
				mu.Unlock()
				if i%17 == 0 {
					l.Reset(key)
				}
				mu.Lock()
				inFlight[key]--
				mu.Unlock()
				if i%3 == 0 {
					r.Release()
				} else {
					r.Fail(now)
				}
			}
		})
	}
	wg.Wait()
	if n := l.size(t); n > maxKeys {
		t.Errorf("size = %d, want <= %d", n, maxKeys)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for el := l.order.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*entry); e.pending != 0 {
			t.Errorf("key %q has %d attempts in flight after every one settled", e.key, e.pending)
		}
	}
}
