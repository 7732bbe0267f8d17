package policy

import (
	"context"
	"time"
)

// Poller returns one round of Watch(ctx, load, interval) at a time, to be
// called with the time a test's own clock says: the tests step the watch
// loop instead of sleeping.
func (e *Engine) Poller(load Loader, interval time.Duration) func(ctx context.Context, now time.Time) {
	return e.newWatcher(load, interval).poll
}

// BaseWithTests is Base with the base's own tests, which Base leaves out.
func BaseWithTests() *Bundle {
	b, err := readBase(true)
	if err != nil {
		panic(err)
	}
	return b
}

// WithTestPollingDelay sets polling delays below WithPollingDelay's floor
// of a second (0: poll again at once), for tests that count polls.
func WithTestPollingDelay(min, max time.Duration) BundleOption {
	return bundleOptionFunc(func(c *bundleConfig) { c.minDelay, c.maxDelay = min, max })
}

// SetClock makes s read the time from now (the retry of a refused version).
func (s *BundleSource) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// Observe makes s tell f what each update after NewEngine's came to: "not
// modified", "loaded", "refused", "unreadable" or "unreachable".
func (s *BundleSource) Observe(f func(outcome string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observe = f
}

// Gates counts the versions s put through the gate (compiled and tested).
func (s *BundleSource) Gates() int64 { return s.gates.Load() }
