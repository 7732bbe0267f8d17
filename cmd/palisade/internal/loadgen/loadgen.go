// Package loadgen drives calls at a fixed concurrency and reports what came
// back: calls, errors by Connect code, calls per second and latency
// percentiles. It knows nothing of the services it loads: a Call does one
// call. `palisade load` uses it on the sample services; a harness comparing
// configurations can use it on anything.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/histogram"
)

// Call makes call number i (counting from 0 across all workers) on worker
// w (0 to Concurrency-1). A nil error counts as a success; otherwise its
// Connect code (connect.CodeOf) is counted.
type Call func(ctx context.Context, w, i int) error

// Options bound a run. At least one of Calls and Duration must be set; with
// both, the run stops at whichever comes first.
type Options struct {
	// Calls is the number of calls to make (0: no bound).
	Calls int
	// Duration is how long to keep starting calls (0: no bound); calls in
	// flight at the end finish.
	Duration time.Duration
	// Concurrency is the number of workers, each making one call at a time.
	Concurrency int
}

// Result is what a run did.
type Result struct {
	// Calls is the number of calls made, successful or not.
	Calls int
	// Errors counts the failed calls by Connect code ("unavailable", …).
	Errors map[string]int
	// FirstErrors keeps the first error message seen for each code.
	FirstErrors map[string]string
	// Elapsed is the wall-clock time of the run.
	Elapsed time.Duration
	// Latency holds the duration of every call.
	Latency histogram.Histogram
}

// ErrorCount returns the number of failed calls.
func (r *Result) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// CallsPerSecond returns the throughput of the run.
func (r *Result) CallsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Calls) / r.Elapsed.Seconds()
}

// String summarizes the run on two lines.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "calls %d  errors %d  elapsed %s  calls/s %.0f\n", r.Calls, r.ErrorCount(), r.Elapsed.Round(time.Millisecond), r.CallsPerSecond())
	fmt.Fprintf(&b, "latency p50 %s  p90 %s  p99 %s  max %s",
		r.Latency.Quantile(0.5).Round(time.Microsecond), r.Latency.Quantile(0.9).Round(time.Microsecond),
		r.Latency.Quantile(0.99).Round(time.Microsecond), r.Latency.Max().Round(time.Microsecond))
	codes := make([]string, 0, len(r.Errors))
	for c := range r.Errors {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for _, c := range codes {
		fmt.Fprintf(&b, "\nerrors %s: %d (first: %s)", c, r.Errors[c], r.FirstErrors[c])
	}
	return b.String()
}

// worker is the part of a Result one worker builds, merged at the end.
type worker struct {
	latency histogram.Histogram
	errors  map[string]int
	first   map[string]string
}

// Run makes calls until opts' bound is reached or ctx is done, and returns
// what happened. It returns once every call it started has returned. Calls
// get ctx itself: Run adds no deadline to them.
func Run(ctx context.Context, opts Options, call Call) (*Result, error) {
	if opts.Concurrency < 1 {
		return nil, errors.New("loadgen: concurrency must be at least 1")
	}
	if opts.Calls < 0 || opts.Duration < 0 || (opts.Calls == 0 && opts.Duration == 0) {
		return nil, errors.New("loadgen: set a number of calls, a duration, or both")
	}
	// A duration stops the run from starting calls; it does not cut calls
	// short. (A deadline on ctx would travel with every call, and a server
	// that answers before its caller's deadline, as it should, would fail
	// the last calls of the run.)
	var stopAt time.Time
	if opts.Duration > 0 {
		stopAt = time.Now().Add(opts.Duration)
	}
	var next atomic.Int64
	workers := make([]worker, opts.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wk := &workers[w]
		wk.errors, wk.first = map[string]int{}, map[string]string{}
		wg.Go(func() {
			for ctx.Err() == nil && (stopAt.IsZero() || time.Now().Before(stopAt)) {
				i := int(next.Add(1) - 1)
				if opts.Calls > 0 && i >= opts.Calls {
					return
				}
				t0 := time.Now()
				err := call(ctx, w, i)
				if err != nil && ctx.Err() != nil {
					// The caller ended the run (ctx) and cut this call
					// short: not the service's error, and not counted.
					return
				}
				wk.latency.Record(time.Since(t0))
				if err != nil {
					code := connect.CodeOf(err).String()
					if wk.errors[code] == 0 {
						wk.first[code] = err.Error()
					}
					wk.errors[code]++
				}
			}
		})
	}
	wg.Wait()
	r := &Result{Elapsed: time.Since(start), Errors: map[string]int{}, FirstErrors: map[string]string{}}
	for i := range workers {
		wk := &workers[i]
		r.Latency.Merge(&wk.latency)
		for c, n := range wk.errors {
			r.Errors[c] += n
			if _, ok := r.FirstErrors[c]; !ok {
				r.FirstErrors[c] = wk.first[c]
			}
		}
	}
	r.Calls = int(r.Latency.Count())
	return r, nil
}
