// Package throttle limits repeated failures, such as password guesses, per
// key: a username, a peer's address or identity, or both ([Limiter]); and
// limits the rate of calls per key with token buckets ([Buckets]).
//
// A [Limiter] keeps, for each key, a sliding log of its most recent failure
// times and the number of its attempts in flight, and admits an attempt only
// while fewer than maxFailures of the two together fall within the window.
// A sliding log rather than a fixed window: a fixed window lets an attacker
// make up to 2×maxFailures guesses across a window boundary, while the log
// guarantees at most maxFailures failures in any interval of one window.
//
// An attempt takes its slot before it is evaluated, and the outcome settles
// the slot. A login handler uses it like this:
//
//	r, retry := l.Reserve(user, time.Now())
//	if r == nil {
//		// refuse without checking the password; tell the client to retry
//		// after retry
//	}
//	if checkPassword(...) {
//		r.Release()
//	} else {
//		r.Fail(time.Now())
//	}
//
// Reserving is atomic, so however many attempts run at once, at most
// maxFailures are evaluated for a key until one settles: a slow check (a
// password hash) cannot be raced by concurrent attempts that all pass the
// limiter before any of them has failed.
//
// A success does not reset the key. [Reservation.Release] frees only its own
// slot; failures already recorded stay until they leave the window, and
// attempts in flight keep theirs. A success proves only that this caller
// knows the password, not that it made the earlier failures: a reset would
// give a guesser a fresh budget each time the real user logs in, and a
// success racing concurrent guesses would erase them. [Limiter.Reset]
// forgets a key's recorded failures explicitly (after a password change, by
// an administrator), and still not the attempts in flight.
//
// Memory is bounded: at most maxKeys keys are tracked, each with at most
// maxFailures timestamps. Expiry is lazy, done by the calls themselves; a
// Limiter starts no goroutine and needs no Close. Note that when the
// Limiter is full, tracking a new key evicts the least recently used key
// that has no attempt in flight, which forgets its failures: choose maxKeys
// well above the number of keys legitimately failing within one window, and
// throttle per peer as well as per username, so that flooding the Limiter
// with keys is itself limited. When every tracked key has an attempt in
// flight, a new key is refused rather than admitted untracked.
package throttle

import (
	"container/list"
	"math"
	"slices"
	"sync"
	"time"
)

// fullRetry is the retryAfter of an attempt refused because every tracked
// key has an attempt in flight: those settle within a password check.
const fullRetry = time.Second

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
	// order holds entries from least to most recently used (reserved or
	// failed), so expired entries and eviction candidates are at the front.
	order list.List
}

// entry is the failure log of one key and its attempts in flight.
type entry struct {
	key string
	// failures holds the key's most recent failure times, at most
	// maxFailures of them, in no particular order.
	failures []time.Time
	// pending is the number of reservations not yet settled.
	pending int
	// last is the most recent reservation or failure time.
	last time.Time
}

// Reservation is an attempt's slot, taken by [Limiter.Reserve]. Settle it
// exactly once, with [Reservation.Fail] or [Reservation.Release]; later
// calls do nothing, as do calls on a nil Reservation. Until it is settled
// it counts as a failure.
type Reservation struct {
	l  *Limiter
	el *list.Element // the entry; it stays tracked while pending > 0
	// settled is guarded by l.mu.
	settled bool
}

// New returns a Limiter that refuses an attempt for a key once maxFailures
// failures and attempts in flight for it fall within window, tracking at
// most maxKeys keys.
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

// Reserve takes a slot for an attempt for key at time now, if the key's
// failures within the window and its attempts in flight number fewer than
// maxFailures. It returns the reservation, which the caller settles once the
// attempt's outcome is known; or nil and how long until an attempt may go
// ahead if no further failure is recorded, counting the attempts in flight
// as failures at now.
func (l *Limiter) Reserve(key string, now time.Time) (r *Reservation, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	l.expire(now)
	el, found := l.keys[key]
	if !found {
		if len(l.keys) >= l.maxKeys {
			victim := l.idleFront()
			if victim == nil {
				return nil, fullRetry
			}
			l.remove(victim)
		}
		el = l.order.PushBack(&entry{key: key, last: now})
		l.keys[key] = el
	}
	e := el.Value.(*entry)
	if wait := e.wait(now, l.maxFailures, l.window); wait > 0 {
		return nil, wait
	}
	e.pending++
	if now.After(e.last) {
		e.last = now
	}
	l.order.MoveToBack(el)
	return &Reservation{l: l, el: el}, 0
}

// Fail settles the reservation as a failed attempt at time now: its slot
// stays taken, as a failure, until now+window.
func (r *Reservation) Fail(now time.Time) {
	if r == nil {
		return
	}
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.settled {
		return
	}
	r.settled = true
	e := r.el.Value.(*entry)
	e.pending--
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
	l.order.MoveToBack(r.el)
}

// Release settles the reservation without recording a failure, because the
// attempt succeeded or was not evaluated: its slot is free again. It forgets
// nothing else: the key's recorded failures and its other attempts in flight
// still count.
func (r *Reservation) Release() {
	if r == nil {
		return
	}
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.settled {
		return
	}
	r.settled = true
	e := r.el.Value.(*entry)
	e.pending--
	if e.pending == 0 && len(e.failures) == 0 {
		l.remove(r.el)
	}
}

// Reset forgets the recorded failures of key, for example after its
// password changed. Attempts in flight keep their slots.
func (l *Limiter) Reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	el, found := l.keys[key]
	if !found {
		return
	}
	if e := el.Value.(*entry); e.pending > 0 {
		e.failures = nil
		return
	}
	l.remove(el)
}

// wait returns how long until e admits an attempt at now, counting its
// attempts in flight as failures at now: 0 if it admits one now.
func (e *entry) wait(now time.Time, maxFailures int, window time.Duration) time.Duration {
	if e.pending >= maxFailures {
		return window
	}
	var recent []time.Time
	for _, t := range e.failures {
		if since(now, t) < window {
			recent = append(recent, t)
		}
	}
	// Admitted while fewer than maxFailures slots are taken: excess+1 of
	// the recent failures must leave the window first, oldest first.
	excess := e.pending + len(recent) - maxFailures
	if excess < 0 {
		return 0
	}
	slices.SortFunc(recent, time.Time.Compare)
	return window - since(now, recent[excess])
}

// expire drops, from the front of the order, the entries with no attempt in
// flight whose every failure is out of the window at now. Each entry is
// dropped at most once after being added, so the cost is amortized O(1) per
// call.
func (l *Limiter) expire(now time.Time) {
	for el := l.order.Front(); el != nil; el = l.order.Front() {
		if e := el.Value.(*entry); e.pending > 0 || since(now, e.last) < l.window {
			return
		}
		l.remove(el)
	}
}

// idleFront returns the least recently used entry with no attempt in
// flight, or nil if every entry has one. Entries with attempts in flight
// are few (they last a password check), so the walk is short.
func (l *Limiter) idleFront() *list.Element {
	for el := l.order.Front(); el != nil; el = el.Next() {
		if el.Value.(*entry).pending == 0 {
			return el
		}
	}
	return nil
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
