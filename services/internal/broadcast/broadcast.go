// Package broadcast wakes every waiter at once: a channel that is closed to
// announce an event and replaced for the next one. Waiters take the channel
// before they look at the state the event changes, so an event that happens
// after they looked is never missed, and the announcer never waits for
// anyone.
package broadcast

import "sync"

// Signal announces events. The zero value is ready to use; it is safe for
// concurrent use.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// Wait returns a channel that is closed at the next Notify.
func (s *Signal) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Notify wakes everyone waiting on a channel Wait returned.
func (s *Signal) Notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}
