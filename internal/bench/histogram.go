package bench

import (
	"math"
	"math/bits"
	"time"
)

// histogram counts latencies in log-linear buckets, as HDR histograms do:
// exact below 128 ns, then 128 buckets per power of two, so a quantile is
// reported within 0.4% of the true value (the bucket's midpoint) in fixed
// memory, whatever the number of calls. Values from 2^40 ns (18 minutes) up
// share the last bucket.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
}

const (
	histPrecision = 7 // bits of mantissa: 128 buckets per power of two
	histSub       = 1 << histPrecision
	histMaxBits   = 40
	histBuckets   = (histMaxBits - histPrecision + 1) * histSub
)

// bucketOf returns the bucket of v nanoseconds.
func bucketOf(v uint64) int {
	if v < histSub {
		return int(v)
	}
	if v >= 1<<histMaxBits {
		return histBuckets - 1
	}
	shift := bits.Len64(v) - 1 - histPrecision
	return (shift+1)<<histPrecision + int(v>>shift) - histSub
}

// bucketRange returns the smallest value of bucket i and the bucket's width.
func bucketRange(i int) (lower, width uint64) {
	if i < 2*histSub {
		return uint64(i), 1
	}
	shift := i>>histPrecision - 1
	return uint64(i&(histSub-1)+histSub) << shift, 1 << shift
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	h.n++
}

func (h *histogram) reset() { *h = histogram{} }

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the value below which a fraction q of the recorded
// values lie (the midpoint of the bucket holding the value of rank
// ceil(q·n)), or 0 when nothing was recorded.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lower, width := bucketRange(i)
			return time.Duration(lower + (width-1)/2)
		}
	}
	return 0 // unreachable: the counts sum to n
}
