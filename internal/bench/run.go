// Package bench measures what Palisade's security costs: it serves the same
// unary call (user.v1.UserService/GetUser, a small request and response)
// through bare Connect without security, with TLS, with mTLS, through
// Palisade's chain with and without OPA, and through grpc-go with the chain
// a user would build without Palisade, all in one process on 127.0.0.1, and
// drives each with the same concurrent callers for the same time, in
// alternating rounds. `palisade bench` is its command line.
//
// Every call must succeed and answer for the user asked; before anything is
// measured a preflight proves each configuration's security is in place
// (forged tokens refused, other users' records denied, clients without a
// certificate refused), so a misconfigured chain cannot make a good figure.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-rpc/palisade/internal/histogram"
	"github.com/palisade-rpc/palisade/security/token"
)

// callGrace is how long a call may still take after its window ends before
// it is cut off (and counted as failed).
const callGrace = 30 * time.Second

// Run starts the selected configurations, checks them, measures them and
// returns the report. It fails when a configuration cannot be started or
// does not pass its preflight; calls that fail while measuring do not make
// it fail but are counted in the report (Report.FailedCalls).
func Run(ctx context.Context, o Options) (*Report, error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	// Tokens outlive the run, whatever its length.
	fx, err := newFixture(o.Users, max(token.DefaultTTL, 2*o.estimate()+10*time.Minute))
	if err != nil {
		return nil, err
	}
	pairs := o.pairs()
	targets := map[string]*target{}
	defer func() {
		for _, t := range targets {
			t.close()
		}
	}()
	rep := &Report{Options: o, Connections: map[string]int64{}, LoadBefore: loadAverage()}
	for _, p := range pairs {
		if targets[p.config] != nil {
			continue
		}
		var t *target
		if p.config == ConfigGRPCGo {
			t, err = startGRPCGo(ctx, fx, o)
		} else {
			t, err = startConnect(fx, p.config, o)
		}
		if err != nil {
			return nil, err
		}
		targets[p.config] = t
		if err := prime(ctx, fx, t, o.Concurrency); err != nil {
			return nil, err
		}
		rep.Connections[p.config] = t.accepted.Load()
	}
	for _, p := range pairs {
		line, err := preflight(ctx, fx, targets[p.config], p.protocol)
		if err != nil {
			return nil, err
		}
		rep.Preflight = append(rep.Preflight, line)
	}
	for _, t := range targets {
		t.dropNoCert()
	}

	r := &runner{o: o, fx: fx, hists: make([]*histogram.Histogram, o.Concurrency)}
	for i := range r.hists {
		r.hists[i] = new(histogram.Histogram)
	}
	acc := map[pair]*series{}
	for _, p := range pairs {
		acc[p] = &series{cpuKnown: true}
	}
	for round := range o.Rounds {
		for _, p := range roundOrder(pairs, round) {
			t, s := targets[p.config], acc[p]
			if o.Warmup > 0 {
				if err := r.window(ctx, t, p.protocol, o.Warmup, s, false); err != nil {
					return nil, err
				}
			}
			if err := r.window(ctx, t, p.protocol, o.Duration, s, true); err != nil {
				return nil, err
			}
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "round %d/%d  %-28s %9.0f rps  %d calls failed\n",
					round+1, o.Rounds, p.String(), s.roundsRPS[len(s.roundsRPS)-1], s.failed())
			}
		}
	}
	rep.LoadAfter = loadAverage()
	rep.Rows = rows(o, pairs, acc)
	return rep, nil
}

// prime makes one call on every connection of t, one after another, so that
// each client has dialled its connection before any load; then one call for
// every user, from workers concurrent callers, so that every token has been
// presented once. That is the steady state the figures describe: a server
// verifies a token's signature once in its lifetime (15 minutes) and serves
// its every other call from the verified-token cache, so the first
// verification's share of a call is negligible. A run too short to reach
// every user would count a share of first verifications that depends on the
// run's length.
func prime(ctx context.Context, fx *fixture, t *target, workers int) error {
	one := func(call getUserFunc, u int) error {
		auth := ""
		if t.tokens {
			auth = fx.auth[u]
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got, err := call(cctx, fx.ids[u], auth)
		if err == nil && got != fx.ids[u] {
			err = errWrongAnswer
		}
		return err
	}
	for p, calls := range t.calls {
		for k, call := range calls {
			if err := one(call, k%len(fx.ids)); err != nil {
				return fmt.Errorf("bench: %s/%s: first call on connection %d: %w", t.config, p, k, err)
			}
		}
	}
	for p, calls := range t.calls {
		var next atomic.Int64
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for u := int(next.Add(1) - 1); u < len(fx.ids) && errs[w] == nil; u = int(next.Add(1) - 1) {
					if err := one(calls[u%len(calls)], u); err != nil {
						errs[w] = fmt.Errorf("bench: %s/%s: first call of %s: %w", t.config, p, fx.ids[u], err)
					}
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

// series accumulates the measured windows of one pair.
type series struct {
	calls    uint64
	elapsed  time.Duration
	mallocs  uint64
	bytes    uint64
	cpu      time.Duration
	cpuKnown bool
	newConns int64
	hist     histogram.Histogram
	// roundsRPS is the throughput of each measured window.
	roundsRPS []float64
	// errors and warmupErrors count failed calls by code; samples keeps the
	// first error message of each code.
	errors, warmupErrors map[string]uint64
	samples              map[string]string
}

func (s *series) failed() uint64 { return sumCounts(s.errors, s.warmupErrors) }

// runner runs windows: the callers' histograms are allocated once.
type runner struct {
	o       Options
	fx      *fixture
	hists   []*histogram.Histogram
	windows uint64
}

// caller is what one calling goroutine counts.
type caller struct {
	calls   uint64
	errors  map[string]uint64
	samples map[string]string
}

func (c *caller) fail(err error) {
	if c.errors == nil {
		c.errors, c.samples = map[string]uint64{}, map[string]string{}
	}
	code := codeOf(err)
	if c.errors[code] == 0 {
		c.samples[code] = err.Error()
	}
	c.errors[code]++
}

// sample is the process's counters at one instant.
type sample struct {
	at       time.Time
	mallocs  uint64
	bytes    uint64
	cpu      time.Duration
	cpuKnown bool
	accepted int64
}

func takeSample(t *target) sample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	cpu, ok := processCPU()
	return sample{at: time.Now(), mallocs: ms.Mallocs, bytes: ms.TotalAlloc, cpu: cpu, cpuKnown: ok, accepted: t.accepted.Load()}
}

// window drives t over protocol with the configured callers for d. A
// measured window adds its calls, latencies, allocations, CPU time and
// errors to s; a warm-up window only its errors.
func (r *runner) window(ctx context.Context, t *target, protocol string, d time.Duration, s *series, measured bool) error {
	calls := t.calls[protocol]
	callers := make([]caller, r.o.Concurrency)
	r.windows++
	callCtx, cancel := context.WithTimeout(ctx, d+callGrace)
	defer cancel()
	var stop atomic.Bool
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		c, h, call := &callers[i], r.hists[i], calls[i%len(calls)]
		h.Reset()
		rng := rand.New(rand.NewPCG(r.o.Seed, r.windows<<32|uint64(i)))
		wg.Go(func() {
			<-start
			for !stop.Load() {
				u := rng.IntN(len(r.fx.ids))
				auth := ""
				if t.tokens {
					auth = r.fx.auth[u]
				}
				begin := time.Now()
				got, err := call(callCtx, r.fx.ids[u], auth)
				elapsed := time.Since(begin)
				if err == nil && got != r.fx.ids[u] {
					err = errWrongAnswer
				}
				if err != nil {
					c.fail(err)
					if callCtx.Err() != nil {
						return
					}
					continue
				}
				c.calls++
				h.Record(elapsed)
			}
		})
	}
	runtime.GC() // every window starts from a collected heap
	before := takeSample(t)
	close(start)
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	wg.Wait()
	after := takeSample(t)
	timer.Stop()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bench: interrupted: %w", err)
	}

	errs := &s.warmupErrors
	if measured {
		errs = &s.errors
	}
	var n uint64
	for i := range callers {
		c := &callers[i]
		n += c.calls
		for code, k := range c.errors {
			if *errs == nil {
				*errs = map[string]uint64{}
			}
			if s.samples == nil {
				s.samples = map[string]string{}
			}
			if _, ok := s.samples[code]; !ok {
				s.samples[code] = c.samples[code]
			}
			(*errs)[code] += k
		}
		if measured {
			s.hist.Merge(r.hists[i])
		}
	}
	if !measured {
		return nil
	}
	elapsed := after.at.Sub(before.at)
	s.calls += n
	s.elapsed += elapsed
	s.mallocs += after.mallocs - before.mallocs
	s.bytes += after.bytes - before.bytes
	s.cpu += after.cpu - before.cpu
	s.cpuKnown = s.cpuKnown && before.cpuKnown && after.cpuKnown
	s.newConns += after.accepted - before.accepted
	s.roundsRPS = append(s.roundsRPS, float64(n)/elapsed.Seconds())
	return nil
}

// loadAverage returns the 1, 5 and 15 minute load averages from
// /proc/loadavg, or "" where there is none.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
