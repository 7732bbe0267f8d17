package throttle

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// Buckets rate-limits calls per key with token buckets: each key's bucket
// holds up to burst tokens and gains rate tokens per second; a call takes one
// token, and a key whose bucket is empty is refused until it refills.
//
// Memory is bounded and there is no goroutine: at most maxKeys buckets are
// kept, refilled lazily from the time of their last use. A bucket idle long
// enough to be full again is the same as no bucket, so it is dropped; when
// maxKeys buckets are all in use, taking a token for a new key evicts the
// least recently used one, which forgets that key's debt (its next call finds
// a full bucket). Choose maxKeys above the number of keys active within
// burst/rate seconds.
//
// Buckets is safe for concurrent use. Create one with [NewBuckets].
type Buckets struct {
	rate    float64 // tokens per second, > 0
	burst   float64 // capacity, >= 1
	maxKeys int
	// full is how long an empty bucket takes to refill: a bucket unused for
	// that long is full and can be forgotten.
	full time.Duration

	mu sync.Mutex
	// keys indexes the elements of order, whose values are *bucket.
	keys map[string]*list.Element
	// order holds buckets from least to most recently used.
	order list.List
}

type bucket struct {
	key    string
	tokens float64
	last   time.Time
}

// NewBuckets returns Buckets allowing each key rate calls per second on
// average and burst calls at once, tracking at most maxKeys keys. Out of range
// arguments are replaced by the most restrictive values rather than left to
// disable the limit: a rate of zero or less (or NaN) becomes one call per
// hour, burst and maxKeys below 1 become 1.
func NewBuckets(rate float64, burst, maxKeys int) *Buckets {
	if !(rate > 0) || math.IsInf(rate, 0) {
		rate = 1.0 / 3600
	}
	b := &Buckets{rate: rate, burst: float64(max(burst, 1)), maxKeys: max(maxKeys, 1), keys: map[string]*list.Element{}}
	b.full = time.Duration(b.burst / b.rate * float64(time.Second))
	return b
}

// Take takes a token from key's bucket at time now. It reports whether the
// call may go ahead; when it may not, retryAfter is how long until the bucket
// holds a token again (nothing is taken from it meanwhile).
func (b *Buckets) Take(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetFull(now)
	el, found := b.keys[key]
	if !found {
		if len(b.keys) >= b.maxKeys {
			b.remove(b.order.Front())
		}
		el = b.order.PushBack(&bucket{key: key, tokens: b.burst, last: now})
		b.keys[key] = el
	}
	k := el.Value.(*bucket)
	if now.After(k.last) {
		k.tokens = min(b.burst, k.tokens+now.Sub(k.last).Seconds()*b.rate)
		k.last = now
	}
	b.order.MoveToBack(el)
	if k.tokens >= 1 {
		k.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - k.tokens) / b.rate * float64(time.Second)))
	return false, max(wait, time.Nanosecond)
}

// Len returns how many keys have a bucket.
func (b *Buckets) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.keys)
}

// forgetFull drops, from the least recently used end, the buckets that have
// refilled completely by now. Each bucket is dropped at most once after being
// added, so the cost is amortized O(1) per call.
func (b *Buckets) forgetFull(now time.Time) {
	for el := b.order.Front(); el != nil; el = b.order.Front() {
		if now.Sub(el.Value.(*bucket).last) < b.full {
			return
		}
		b.remove(el)
	}
}

func (b *Buckets) remove(el *list.Element) {
	delete(b.keys, el.Value.(*bucket).key)
	b.order.Remove(el)
}
