// Package throttle slows down repeated failures, such as password guesses,
// per key: a username, a peer's address or identity, or both ([Limiter]);
// and limits the rate of calls per key with token buckets ([Buckets]).
//
// A [Limiter] keeps, for each key, a sliding log of its most recent failure
// times and refuses a key once maxFailures of them fall within the window.
// A sliding log rather than a fixed window: a fixed window lets an attacker
// make up to 2×maxFailures guesses across a window boundary, while the log
// guarantees at most maxFailures failures in any interval of one window.
//
// A login handler uses it like this:
//
//	if ok, retry := l.Allow(user, time.Now()); !ok {
//		// refuse without checking the password; tell the client to retry
//		// after retry
//	}
//	if checkPassword(...) {
//		l.Reset(user)
//	} else {
//		l.Failure(user, time.Now())
//	}
//
// Allow and Failure are separate calls, so concurrent attempts that all pass
// Allow before any records its Failure can together exceed maxFailures by at
// most the number of attempts in flight for that key.
//
// Memory is bounded: at most maxKeys keys are tracked, each with at most
// maxFailures timestamps. Expiry is lazy, done by the calls themselves; a
// Limiter starts no goroutine and needs no Close. Note that when the
// Limiter is full, tracking a new key evicts the least recently failed
// one, which forgets its failures: choose maxKeys well above the number of
// keys legitimately failing within one window, and throttle per peer as well
// as per username, so that flooding the Limiter with keys is itself limited.
package throttle

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// Limiter throttles repeated failures per key. It is safe for concurrent
// use. Create one with [New]; the zero value behaves as New(0, 0, 0), the
// most restrictive setting.
type Limiter struct {
	maxFailures int
	window      time.Duration
	maxKeys     int

	mu sync.Mutex
	// keys indexes the elements of order, whose values are *entry.
	keys map[string]*list.Element
	// order holds entries from least to most recently failed, so expired
	// entries and eviction candidates are at the front.
	order list.List
}

// entry is the failure log of one key.
type entry struct {
	key string
	// failures holds the key's most recent failure times, at most
	// maxFailures of them, in no particular order.
	failures []time.Time
	// last is the most recent failure time.
	last time.Time
}

// New returns a Limiter that refuses a key once maxFailures failures for it
// happened within window, tracking at most maxKeys keys.
//
// Arguments out of range are replaced by the most restrictive value rather
// than left to disable throttling: maxFailures and maxKeys below 1 become 1,
// and a window of zero or less never expires, so a key that reached
// maxFailures stays refused until [Limiter.Reset] or eviction.
func New(maxFailures int, window time.Duration, maxKeys int) *Limiter {
	l := &Limiter{maxFailures: maxFailures, window: window, maxKeys: maxKeys}
	l.init()
	return l
}

// init replaces out-of-range settings as New documents and makes the map.
// Every method calls it under the lock, so the zero Limiter is usable.
func (l *Limiter) init() {
	if l.keys != nil {
		return
	}
	l.maxFailures = max(l.maxFailures, 1)
	l.maxKeys = max(l.maxKeys, 1)
	if l.window <= 0 {
		l.window = math.MaxInt64
	}
	l.keys = make(map[string]*list.Element)
}

// Allow reports whether an attempt for key may go ahead at time now. When it
// may not, retryAfter is how long until it may, if no further failure is
// recorded; otherwise retryAfter is 0. Allow does not record anything: call
// [Limiter.Failure] when the attempt fails.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	l.expire(now)
	el, found := l.keys[key]
	if !found {
		return true, 0
	}
	e := el.Value.(*entry)
	if len(e.failures) < l.maxFailures {
		return true, 0
	}
	// The log holds exactly the maxFailures most recent failures: the key
	// is refused while the oldest of them is still within the window.
	oldest := e.failures[e.oldestIndex()]
	if left := l.window - since(now, oldest); left > 0 {
		return false, left
	}
	return true, 0
}

// Failure records a failed attempt for key at time now.
func (l *Limiter) Failure(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	l.expire(now)
	el, found := l.keys[key]
	if !found {
		if len(l.keys) >= l.maxKeys {
			// expire already dropped every expired entry at the front, so
			// the front is the least recently failed key.
			l.remove(l.order.Front())
		}
		e := &entry{key: key, failures: []time.Time{now}, last: now}
		l.keys[key] = l.order.PushBack(e)
		return
	}
	e := el.Value.(*entry)
	if len(e.failures) < l.maxFailures {
		e.failures = append(e.failures, now)
	} else {
		// Keep the most recent failures: replace the oldest. Callers may
		// pass times slightly out of order, so find it rather than assume.
		e.failures[e.oldestIndex()] = now
	}
	if now.After(e.last) {
		e.last = now
	}
	l.order.MoveToBack(el)
}

// Reset forgets the failures of key, as after a successful login.
func (l *Limiter) Reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	if el, found := l.keys[key]; found {
		l.remove(el)
	}
}

// expire drops, from the front of the order, the entries whose every failure
// is out of the window at now. Each entry is dropped at most once after
// being added, so the cost is amortized O(1) per call.
func (l *Limiter) expire(now time.Time) {
	for el := l.order.Front(); el != nil; el = l.order.Front() {
		if since(now, el.Value.(*entry).last) < l.window {
			return
		}
		l.remove(el)
	}
}

func (l *Limiter) remove(el *list.Element) {
	delete(l.keys, el.Value.(*entry).key)
	l.order.Remove(el)
}

// oldestIndex returns the index of e's oldest failure. It is O(maxFailures).
func (e *entry) oldestIndex() int {
	oldest := 0
	for i, t := range e.failures {
		if t.Before(e.failures[oldest]) {
			oldest = i
		}
	}
	return oldest
}

// since is now.Sub(t), but 0 when t is after now (a caller passed times out
// of order), so that it never overflows when subtracted from the window.
func since(now, t time.Time) time.Duration {
	return max(now.Sub(t), 0)
}
