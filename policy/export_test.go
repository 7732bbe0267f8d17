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
