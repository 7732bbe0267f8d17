package e2e_test

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkInvalidationLatency: one user service, 3 order replicas; each
// iteration renames alice in the user store and waits until every replica
// has applied the change. It reports the latency from the change's commit
// (its time, taken in the transaction just before COMMIT) to each replica's
// invalidation, as p50-ms, p99-ms and max-ms over all replicas and
// iterations. Run it with enough iterations for a p99:
//
//	go test -run '^$' -bench InvalidationLatency -benchtime 500x ./services/e2e
func BenchmarkInvalidationLatency(b *testing.B) {
	f := StartFleet(b, FleetOptions{Replicas: 3})
	start := f.Latest(b)
	for i := 0; b.Loop(); i++ {
		rename(b, f.UserStore, "alice", fmt.Sprintf("Alice %d", i))
		seq := start + int64(i) + 1
		for _, r := range f.Replicas {
			for r.Srv.UserCache.Stats().LastSequence < seq {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	b.StopTimer()
	var all []time.Duration
	for _, r := range f.Replicas {
		r.mu.Lock()
		all = append(all, r.latencies[start:]...)
		r.mu.Unlock()
	}
	if len(all) == 0 {
		b.Fatal("no invalidation measured")
	}
	slices.Sort(all)
	ms := func(q float64) float64 {
		return float64(all[min(int(q*float64(len(all))), len(all)-1)]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
	b.ReportMetric(ms(1), "max-ms")
	b.ReportMetric(float64(len(all)), "invalidations")
}
