package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// subBuckets is how many buckets split each power of two: a recorded
// duration is known to within 1/16 (6.25%) of its value.
const subBuckets = 16

// Histogram counts durations in log-linear buckets: fixed memory (about 8
// KiB) whatever the number of samples, so a long soak does not grow it. The
// zero value is ready to use; it is not safe for concurrent use (give each
// goroutine its own and Merge them).
type Histogram struct {
	counts [61 * subBuckets]uint64
	n      uint64
	max    time.Duration
}

// bucketOf returns the bucket of d: exact below 16ns, then 16 buckets per
// power of two.
func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < subBuckets {
		return int(v)
	}
	e := bits.Len64(v) - 5 // keep the leading 1 and 4 more bits
	m := v >> e            // 16..31
	return (e+1)*subBuckets + int(m-subBuckets)
}

// upperBound is the largest duration bucket i holds.
func upperBound(i int) time.Duration {
	if i < subBuckets {
		return time.Duration(i)
	}
	e := i/subBuckets - 1
	m := uint64(i%subBuckets + subBuckets)
	return time.Duration((m+1)<<e - 1)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

// Merge adds the samples of o.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count returns the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest sample.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the duration below which a fraction q (0 to 1) of the
// samples fall, as the upper bound of its bucket (never above Max); 0
// without samples.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(math.Max(0, math.Min(q, 1)) * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(upperBound(i), h.max)
		}
	}
	return h.max
}
