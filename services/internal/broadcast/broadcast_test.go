package broadcast_test

import (
	"testing"

	"github.com/palisade-rpc/palisade/services/internal/broadcast"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestNotifyWakesEveryWaiterOnce(t *testing.T) {
	t.Parallel()
	var s broadcast.Signal
	s.Notify() // nobody waits: nothing to wake, and no panic
	a, b := s.Wait(), s.Wait()
	if a != b || closed(a) {
		t.Fatal("waiters before an event must share an open channel")
	}
	s.Notify()
	if !closed(a) || !closed(b) {
		t.Fatal("Notify did not wake the waiters")
	}
	c := s.Wait()
	if closed(c) {
		t.Fatal("a waiter after the event was woken by it")
	}
	s.Notify()
	if !closed(c) {
		t.Fatal("the second Notify did not wake the new waiter")
	}
}
