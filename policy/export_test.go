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
