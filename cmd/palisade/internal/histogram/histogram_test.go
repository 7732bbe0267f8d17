package histogram

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestQuantilesWithinResolution: quantiles of two merged halves are within
// 0.4% of the exact ones of the whole, the last one is the maximum.
func TestQuantilesWithinResolution(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var a, b Histogram
	values := make([]time.Duration, 100000)
	for i := range values {
		// Log-uniform between 1 µs and 1 s, like latencies.
		values[i] = time.Duration(1e3 * math.Pow(10, 6*rng.Float64()))
		if i%2 == 0 {
			a.Record(values[i])
		} else {
			b.Record(values[i])
		}
	}
	a.Merge(&b)
	slices.Sort(values)
	if a.Count() != uint64(len(values)) || a.Max() != values[len(values)-1] {
		t.Fatalf("count %d, max %v; want %d, %v", a.Count(), a.Max(), len(values), values[len(values)-1])
	}
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999} {
		exact := values[int(q*float64(len(values)))-1]
		got := a.Quantile(q)
		if diff := float64(got-exact) / float64(exact); diff > 0.004 || diff < -0.004 {
			t.Errorf("q%v: got %v, exact %v (%.3f%%)", q, got, exact, 100*diff)
		}
	}
	if got := a.Quantile(1); got != a.Max() {
		t.Errorf("q1 = %v, want the maximum %v", got, a.Max())
	}
	a.Reset()
	if a.Count() != 0 || a.Quantile(0.5) != 0 {
		t.Errorf("after Reset: count %d, median %v", a.Count(), a.Quantile(0.5))
	}
}

// TestBucketsClaimTheirValues: every value falls in the bucket that claims
// it, buckets are in order, and huge values share the last one.
func TestBucketsClaimTheirValues(t *testing.T) {
	t.Parallel()
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 257, 1000, 1 << 20, 1<<20 + 12345, 1<<40 - 1} {
		i := bucketOf(v)
		lower, width := bucketRange(i)
		if v < lower || v >= lower+width || i < prev {
			t.Errorf("value %d in bucket %d = [%d, %d), after bucket %d", v, i, lower, lower+width, prev)
		}
		prev = i
	}
	if i := bucketOf(1<<63 - 1); i != buckets-1 {
		t.Errorf("huge value in bucket %d, want the last, %d", i, buckets-1)
	}
	var h Histogram
	h.Record(-time.Second)
	if h.Max() != 0 || h.Quantile(0.5) != 0 {
		t.Errorf("a negative duration counted as %v", h.Max())
	}
}
