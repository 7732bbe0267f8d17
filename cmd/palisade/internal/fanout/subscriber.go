package fanout

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// subscriber is one subscriber of a run, on either side: what it received
// and when. Its subscription (stop) is the feed's; it is replaced when the
// subscriber is restarted.
type subscriber struct {
	id int
	// base is the sequence the subscriber first subscribed after: change k
	// of the run (from 0) has sequence base+1+k.
	base int64
	// recv[k] is when change k arrived, on now's clock; 0 while it has not.
	// Only the subscription's receive loop writes it; the harness reads it
	// once the loop has returned, or entries below last.
	recv []int64
	dups int64
	// last is the newest sequence received (base before any).
	last atomic.Int64
	// stop ends the current subscription and waits for its receive loop.
	stop func()

	mu  sync.Mutex
	err error // the first failure of a subscription
}

func newSubscriber(id int, base int64, changes int) *subscriber {
	s := &subscriber{id: id, base: base, recv: make([]int64, changes)}
	s.last.Store(base)
	return s
}

// receive records that the change with sequence seq arrived at at. A
// change outside the run is an error; one received twice is counted.
func (s *subscriber) receive(seq, at int64) error {
	k := seq - s.base - 1
	if k < 0 || k >= int64(len(s.recv)) {
		return fmt.Errorf("received sequence %d, outside the run's %d..%d", seq, s.base+1, s.base+int64(len(s.recv)))
	}
	if s.recv[k] != 0 {
		s.dups++
		return nil
	}
	s.recv[k] = at
	if seq > s.last.Load() {
		s.last.Store(seq)
	}
	return nil
}

// fail records err as the subscriber's failure, if it is the first.
func (s *subscriber) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = fmt.Errorf("subscriber %d: %w", s.id, err)
	}
}

func (s *subscriber) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// waitFor waits until every subscriber of subs has received sequence seq,
// polling every millisecond, and fails when one of them has failed or
// timeout has passed.
func waitFor(ctx context.Context, subs []*subscriber, seq int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		behind := 0
		for _, s := range subs {
			if err := s.failure(); err != nil {
				return err
			}
			if s.last.Load() < seq {
				behind++
			}
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d subscribers had not received sequence %d after %s", behind, len(subs), seq, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// each runs f for every subscriber of subs, at most parallel at once, and
// returns the first error.
func each(subs []*subscriber, parallel int, f func(*subscriber) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, parallel)
	for _, s := range subs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(s); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}
