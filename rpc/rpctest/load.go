package rpctest

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Load makes calls from several goroutines without pause, for tests that
// change something under traffic (rotate a certificate, reload a policy)
// and then check that no call failed.
type Load struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value // error
	stop       chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

// StartLoad starts workers goroutines; each calls call(worker) in a loop
// until Stop, which the test's cleanup calls too.
func StartLoad(tb testing.TB, workers int, call func(worker int) error) *Load {
	l := &Load{stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := call(w); err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err)
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	tb.Cleanup(l.Stop)
	return l
}

// Stop ends the load and waits for the calls in flight. It may be called
// more than once.
func (l *Load) Stop() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// OK and Failed return the number of calls that succeeded and failed so far.
func (l *Load) OK() int64     { return l.ok.Load() }
func (l *Load) Failed() int64 { return l.failed.Load() }

// FirstError returns the error of the first failed call, or nil.
func (l *Load) FirstError() error {
	err, _ := l.firstErr.Load().(error)
	return err
}

// Progress waits until n more calls have succeeded, or one has failed; it
// fails the test if that takes more than 30 seconds. It makes sure that the
// load really ran through each step of a test.
func (l *Load) Progress(tb testing.TB, step string, n int64) {
	tb.Helper()
	target := l.OK() + n
	WaitFor(tb, "calls after "+step, func() bool { return l.OK() >= target || l.Failed() > 0 })
}

// WaitFor polls cond until it holds, failing the test after 30 seconds.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("rpctest: timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
