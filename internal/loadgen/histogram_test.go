package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsCoverEveryDuration(t *testing.T) {
	t.Parallel()
	prev := -1
	for _, d := range []time.Duration{0, 1, 15, 16, 17, 31, 32, 33, 1000, time.Millisecond, time.Second, time.Hour, 1<<63 - 1} {
		i := bucketOf(d)
		if i < prev {
			t.Fatalf("bucket of %v is %d, before %d", d, i, prev)
		}
		if i >= len(Histogram{}.counts) {
			t.Fatalf("bucket of %v is %d, out of range", d, i)
		}
		if ub := upperBound(i); ub < d || (d >= 16 && float64(ub-d) > float64(d)/subBuckets) {
			t.Fatalf("upper bound of %v's bucket is %v", d, ub)
		}
		prev = i
	}
}

// TestQuantileMatchesExactWithinResolution compares with sorted samples.
func TestQuantileMatchesExactWithinResolution(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	var a, b Histogram
	var all []time.Duration
	for i := range 20000 {
		d := time.Duration(r.ExpFloat64() * float64(5*time.Millisecond))
		all = append(all, d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	slices.Sort(all)
	if a.Count() != 20000 || a.Max() != all[len(all)-1] {
		t.Fatalf("count %d max %v", a.Count(), a.Max())
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := all[int(q*float64(len(all)))-1]
		got := a.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/subBuckets {
			t.Errorf("q%.3f = %v, exact %v", q, got, exact)
		}
	}
	if got := a.Quantile(1); got != a.Max() {
		t.Errorf("q1 = %v, want max %v", got, a.Max())
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
}
