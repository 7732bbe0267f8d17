package throttle

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func mustTake(tb testing.TB, b *Buckets, key string, now time.Time) {
	tb.Helper()
	if ok, retry := b.Take(key, now); !ok || retry != 0 {
		tb.Fatalf("Take(%q, t0+%v) = %v, %v; want true, 0", key, now.Sub(t0), ok, retry)
	}
}

func mustWait(tb testing.TB, b *Buckets, key string, now time.Time, wantRetry time.Duration) {
	tb.Helper()
	if ok, retry := b.Take(key, now); ok || retry != wantRetry {
		tb.Fatalf("Take(%q, t0+%v) = %v, %v; want false, %v", key, now.Sub(t0), ok, retry, wantRetry)
	}
}

func TestBucketsBurstThenRate(t *testing.T) {
	t.Parallel()
	b := NewBuckets(2, 3, 100) // 2 calls/s, bursts of 3
	for range 3 {
		mustTake(t, b, "alice", t0)
	}
	mustWait(t, b, "alice", t0, 500*time.Millisecond)
	// A refused call takes nothing: the wait shrinks as time passes.
	mustWait(t, b, "alice", t0.Add(200*time.Millisecond), 300*time.Millisecond)
	mustTake(t, b, "alice", t0.Add(500*time.Millisecond))
	mustWait(t, b, "alice", t0.Add(500*time.Millisecond), 500*time.Millisecond)
	// Refills up to the burst, not beyond.
	later := t0.Add(time.Hour)
	for range 3 {
		mustTake(t, b, "alice", later)
	}
	mustWait(t, b, "alice", later, 500*time.Millisecond)
}

func TestBucketsKeysAreIndependent(t *testing.T) {
	t.Parallel()
	b := NewBuckets(1, 1, 100)
	mustTake(t, b, "alice", t0)
	mustWait(t, b, "alice", t0, time.Second)
	mustTake(t, b, "bob", t0)
}

func TestBucketsForgetFullBuckets(t *testing.T) {
	t.Parallel()
	b := NewBuckets(10, 5, 100) // refills from empty in 500ms
	for i := range 50 {
		mustTake(t, b, fmt.Sprint("user", i), t0)
	}
	if n := b.Len(); n != 50 {
		t.Fatalf("Len = %d, want 50", n)
	}
	mustTake(t, b, "late", t0.Add(499*time.Millisecond))
	if n := b.Len(); n != 51 {
		t.Fatalf("Len before the buckets refilled = %d, want 51", n)
	}
	mustTake(t, b, "late", t0.Add(500*time.Millisecond))
	if n := b.Len(); n != 1 {
		t.Fatalf("Len after the idle buckets refilled = %d, want 1", n)
	}
}

func TestBucketsEvictLeastRecentlyUsedWhenFull(t *testing.T) {
	t.Parallel()
	b := NewBuckets(1, 1, 2)
	mustTake(t, b, "a", t0)
	mustTake(t, b, "b", t0)
	mustWait(t, b, "a", t0, time.Second) // a is now the most recently used
	mustTake(t, b, "c", t0)              // evicts b
	if n := b.Len(); n != 2 {
		t.Fatalf("Len = %d, want 2", n)
	}
	mustWait(t, b, "a", t0, time.Second) // a kept its debt
	mustTake(t, b, "b", t0)              // b was forgotten: a fresh bucket
}

func TestBucketsOutOfRangeSettingsAreStrict(t *testing.T) {
	t.Parallel()
	b := NewBuckets(0, 0, 0)
	mustTake(t, b, "a", t0)
	mustWait(t, b, "a", t0, time.Hour)
	mustTake(t, b, "b", t0) // evicts a: one key at most
	if n := b.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
}

func TestBucketsClockGoingBackwards(t *testing.T) {
	t.Parallel()
	b := NewBuckets(1, 1, 10)
	mustTake(t, b, "a", t0)
	// An earlier time neither refills nor underflows.
	mustWait(t, b, "a", t0.Add(-time.Hour), time.Second)
	mustTake(t, b, "a", t0.Add(time.Second))
}

func TestBucketsConcurrentTakesNeverExceedBurst(t *testing.T) {
	t.Parallel()
	b := NewBuckets(1, 100, 10)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		allowed int
	)
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if ok, _ := b.Take("k", t0); ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if allowed != 100 {
		t.Fatalf("%d of 400 concurrent calls allowed at one instant, want the burst of 100", allowed)
	}
}
