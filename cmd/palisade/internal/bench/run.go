// Package bench measures what Palisade's security costs: it serves the same
// unary call (user.v1.UserService/GetUser, a small request and response)
// through bare Connect without security, with TLS, with mTLS, through
// net/http with mTLS and a hand-written gRPC handler (no connect-go),
// through Palisade's chain with and without OPA, and through grpc-go bare
// and with the chain a user would build without Palisade (with and without
// caches),
// on 127.0.0.1, and drives each with the same concurrent callers for the
// same time, in alternating rounds. The servers run in a child process, the
// clients in this one, so that each side's CPU time and allocations are
// measured apart. `palisade bench` is its command line.
//
// Every call must succeed and answer for the user asked; before anything is
// measured a preflight proves each configuration's security is in place
// (forged tokens and tokens presented with another certificate refused,
// other users' records denied, clients without a certificate refused), so a
// misconfigured chain cannot make a good figure.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/histogram"
	"github.com/palisade-rpc/palisade/security/token"
)

// callGrace is how long a call may still take after its window ends before
// it is cut off (and counted as failed).
const callGrace = 30 * time.Second

// Run starts the selected configurations, checks them, measures them and
// returns the report. It fails when a configuration cannot be started or
// does not pass its preflight; calls that fail while measuring do not make
// it fail but are counted in the report (Report.FailedCalls).
func Run(ctx context.Context, o Options) (rep *Report, err error) {
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
	var configs []string
	for _, p := range pairs {
		if !slices.Contains(configs, p.config) {
			configs = append(configs, p.config)
		}
	}
	var side serverSide
	if o.InProcess {
		set, err := startServers(ctx, fx.server, configs, o.ServerLog)
		if err != nil {
			return nil, err
		}
		side = localServers{set}
	} else {
		if side, err = startServerProcess(ctx, o, fx.server, configs); err != nil {
			return nil, err
		}
	}
	// Clients close before the servers.
	targets := map[pair]*target{} // by config and client; protocol unset
	defer func() {
		for _, t := range targets {
			t.close()
		}
		if cerr := side.close(); cerr != nil && err == nil {
			rep, err = nil, cerr
		}
	}()

	rep = &Report{Options: o, Connections: map[string]int64{}, LoadBefore: loadAverage(), SeparateProcesses: !o.InProcess}
	for _, p := range pairs {
		k := pair{config: p.config, client: p.client}
		if targets[k] != nil {
			continue
		}
		var protocols []string
		for _, q := range pairs {
			if q.config == p.config && q.client == p.client {
				protocols = append(protocols, q.protocol)
			}
		}
		t, err := startTarget(fx, p.config, p.client, side.addr(p.config), protocols, o)
		if err != nil {
			return nil, err
		}
		targets[k] = t
		if err := prime(ctx, fx, t, o.Concurrency); err != nil {
			return nil, err
		}
	}
	s, err := side.sample(false)
	if err != nil {
		return nil, err
	}
	for _, c := range configs {
		rep.Connections[c] = s.Accepted[c]
	}
	for _, p := range pairs {
		line, err := preflight(ctx, fx, targets[pair{config: p.config, client: p.client}], p.protocol)
		if err != nil {
			return nil, err
		}
		rep.Preflight = append(rep.Preflight, line)
	}
	for _, t := range targets {
		t.dropStrangers()
	}

	r := &runner{o: o, fx: fx, side: side, hists: make([]*histogram.Histogram, o.Concurrency), win: new(histogram.Histogram)}
	for i := range r.hists {
		r.hists[i] = new(histogram.Histogram)
	}
	acc := map[pair]*series{}
	for _, p := range pairs {
		acc[p] = &series{cpuKnown: true, separate: !o.InProcess}
	}
	for round := range o.Rounds {
		for _, p := range roundOrder(pairs, round) {
			t, s := targets[pair{config: p.config, client: p.client}], acc[p]
			if o.Warmup > 0 {
				if err := r.window(ctx, t, p.protocol, o.Warmup, s, false); err != nil {
					return nil, err
				}
			}
			if err := r.window(ctx, t, p.protocol, o.Duration, s, true); err != nil {
				return nil, err
			}
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "round %d/%d  %-40s %9.0f rps  %d calls failed\n",
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
		if t.spec().tokens {
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
	calls   uint64
	elapsed time.Duration
	// client and server are the deltas of each side's counters; with the
	// servers in this process, client holds both sides' and separate is
	// false.
	client, server counters
	separate       bool
	cpuKnown       bool
	newConns       int64
	hist           histogram.Histogram
	// roundsRPS and roundsP99 are the throughput and p99 latency of each
	// measured window.
	roundsRPS []float64
	roundsP99 []time.Duration
	// errors and warmupErrors count failed calls by code; samples keeps the
	// first error message of each code.
	errors, warmupErrors map[string]uint64
	samples              map[string]string
}

// counters are a process's allocation and CPU counters, or their deltas.
type counters struct {
	mallocs, bytes uint64
	cpu            time.Duration
}

func (s *series) failed() uint64 { return sumCounts(s.errors, s.warmupErrors) }

// runner runs windows: the callers' histograms are allocated once.
type runner struct {
	o       Options
	fx      *fixture
	side    serverSide
	hists   []*histogram.Histogram
	win     *histogram.Histogram
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

// sample is this process's counters at one instant.
type sample struct {
	at       time.Time
	c        counters
	cpuKnown bool
}

func takeSample() sample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	cpu, ok := processCPU()
	return sample{at: time.Now(), c: counters{mallocs: ms.Mallocs, bytes: ms.TotalAlloc, cpu: cpu}, cpuKnown: ok}
}

// window drives t over protocol with the configured callers for d. A
// measured window adds its calls, latencies, both sides' allocations and
// CPU time and its errors to s; a warm-up window only its errors.
func (r *runner) window(ctx context.Context, t *target, protocol string, d time.Duration, s *series, measured bool) error {
	calls := t.calls[protocol]
	tokens := t.spec().tokens
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
				if tokens {
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
	// Every window starts from collected heaps, the server's first.
	runtime.GC()
	srvBefore, err := r.side.sample(true)
	if err != nil {
		stop.Store(true)
		close(start)
		wg.Wait()
		return err
	}
	before := takeSample()
	close(start)
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	wg.Wait()
	after := takeSample()
	timer.Stop()
	srvAfter, err := r.side.sample(false)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bench: interrupted: %w", err)
	}

	errs := &s.warmupErrors
	if measured {
		errs = &s.errors
	}
	var n uint64
	r.win.Reset()
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
		r.win.Merge(r.hists[i])
	}
	if !measured {
		return nil
	}
	s.hist.Merge(r.win)
	elapsed := after.at.Sub(before.at)
	s.calls += n
	s.elapsed += elapsed
	s.client.mallocs += after.c.mallocs - before.c.mallocs
	s.client.bytes += after.c.bytes - before.c.bytes
	s.client.cpu += after.c.cpu - before.c.cpu
	s.cpuKnown = s.cpuKnown && before.cpuKnown && after.cpuKnown
	if s.separate {
		s.server.mallocs += srvAfter.Mallocs - srvBefore.Mallocs
		s.server.bytes += srvAfter.Bytes - srvBefore.Bytes
		s.server.cpu += srvAfter.CPU - srvBefore.CPU
		s.cpuKnown = s.cpuKnown && srvBefore.CPUKnown && srvAfter.CPUKnown
	}
	s.newConns += srvAfter.Accepted[t.config] - srvBefore.Accepted[t.config]
	s.roundsRPS = append(s.roundsRPS, float64(n)/elapsed.Seconds())
	s.roundsP99 = append(s.roundsP99, r.win.Quantile(0.99))
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
