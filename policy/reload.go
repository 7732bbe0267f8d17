package policy

import (
	"context"
	"fmt"
	"time"

	"github.com/palisade-rpc/palisade/internal/poll"
)

// Loader produces the current bundle from wherever policies come from.
type Loader func(ctx context.Context) (*Bundle, error)

// DirLoader loads the policies in a directory (LoadDir).
func DirLoader(dir string) Loader {
	return func(context.Context) (*Bundle, error) { return LoadDir(dir) }
}

// BundleLoader loads an OPA bundle from a file (ReadBundleFile). A bundle
// on a server is fetched by a BundleSource instead: OPA's downloader, with
// ETags, long polling, signatures and a persisted last good bundle.
func BundleLoader(file string) Loader {
	return func(context.Context) (*Bundle, error) { return ReadBundleFile(file) }
}

// maxRetryDelay caps the delay between two attempts of Watch to read an
// unreadable source or to load a refused version again (the cap of OPA's
// own bundle polling).
const maxRetryDelay = 2 * time.Minute

// Watch reloads the engine from load every interval until ctx is done. A
// change is tried once it has settled, reading the same on two polls in a
// row, so files being copied into a directory one by one are not compiled
// half old, half new. It is then compiled, its rego tests are run, and only
// if both succeed (and it has tests, unless WithUntestedPolicies) is it swapped in
// (Engine.Load). Meanwhile, and whenever a version is refused, the last
// good policy keeps deciding.
//
// Failures are retried with backoff: the delay starts at interval and
// doubles with each failure in a row, up to two minutes (or interval, if
// longer). A source that cannot be read (a file missing, or
// caught mid-write) is read again only after that delay. A version that
// was refused (it does not compile, a test fails, it has none) is loaded
// again after that delay while the source still holds it — a failure may
// be transient, a test timing out on a loaded machine, say — but the
// source is still read every interval, and a changed version is tried as
// soon as it settles. The first failure is logged as an error, each retry
// that fails again as a warning (so at most one line per delay), and
// recovery at info.
func (e *Engine) Watch(ctx context.Context, load Loader, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("policy: watch interval %s is not positive", interval)
	}
	w := e.newWatcher(load, interval)
	return poll.Every(ctx, interval, func() { w.poll(ctx, time.Now()) })
}

// watcher is the state of Watch between polls. poll takes the time, so
// tests step it with a clock of their own.
type watcher struct {
	e        *Engine
	load     Loader
	interval time.Duration

	seen string // the revision the previous poll read; "" after a failed read

	readFailures int       // failed reads in a row
	readAfter    time.Time // no read before this while readFailures > 0

	refused  string    // the revision refused last; "" when none is pending
	refusals int       // refusals of that revision in a row
	retryAt  time.Time // when that revision may be loaded again
}

func (e *Engine) newWatcher(load Loader, interval time.Duration) *watcher {
	return &watcher{e: e, load: load, interval: interval, seen: e.Revision()}
}

// backoff is the delay after the n-th failure in a row (n >= 1).
func (w *watcher) backoff(n int) time.Duration {
	limit := max(maxRetryDelay, w.interval)
	d := w.interval
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// poll is one round of Watch, at now.
func (w *watcher) poll(ctx context.Context, now time.Time) {
	if w.readFailures > 0 && now.Before(w.readAfter) {
		return
	}
	b, err := w.load(ctx)
	if err != nil {
		w.readFailures++
		w.seen = ""
		delay := w.backoff(w.readFailures)
		w.readAfter = now.Add(delay)
		if w.readFailures == 1 {
			w.e.log.ErrorContext(ctx, "policy source unreadable; the previous policy stays in force",
				"error", err, "retry_in", delay.String())
		} else {
			w.e.log.WarnContext(ctx, "policy source still unreadable; the previous policy stays in force",
				"error", err, "failures", w.readFailures, "retry_in", delay.String())
		}
		return
	}
	if w.readFailures > 0 {
		w.e.log.InfoContext(ctx, "policy source readable again", "origin", b.Origin, "failures", w.readFailures)
		w.readFailures = 0
	}
	rev := b.Revision()
	settled := rev == w.seen
	w.seen = rev
	if !settled {
		return
	}
	if rev == w.e.Revision() {
		w.refused = "" // back to the version in force: nothing to retry
		return
	}
	if rev == w.refused && now.Before(w.retryAt) {
		return
	}
	err = w.e.swap(ctx, b)
	if err == nil {
		if rev == w.refused {
			w.e.log.InfoContext(ctx, "policy accepted on retry", "origin", b.Origin, "revision", rev, "refusals", w.refusals)
		}
		w.refused, w.refusals = "", 0
		return
	}
	if rev != w.refused {
		w.refused, w.refusals = rev, 0
	}
	w.refusals++
	delay := w.backoff(w.refusals)
	w.retryAt = now.Add(delay)
	if w.refusals == 1 {
		w.e.log.ErrorContext(ctx, "policy refused; the previous one stays in force",
			"origin", b.Origin, "revision", rev, "error", err, "retry_in", delay.String())
	} else {
		w.e.log.WarnContext(ctx, "policy refused again; the previous one stays in force",
			"origin", b.Origin, "revision", rev, "error", err, "refusals", w.refusals, "retry_in", delay.String())
	}
}
