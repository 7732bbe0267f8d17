// Package poll runs the periodic checks of Palisade's watchers (policy
// directories and bundles, certificate files, signing keys): one loop, owned
// by a context.
package poll

import (
	"context"
	"time"
)

// Every calls check every interval until ctx is done, then returns
// ctx.Err(). check runs on the caller's goroutine, never concurrently with
// itself. interval must be positive.
func Every(ctx context.Context, interval time.Duration, check func()) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			check()
		}
	}
}
