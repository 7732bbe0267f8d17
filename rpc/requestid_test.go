package rpc

import (
	"testing"
)

func TestGeneratedIDsAreValid(t *testing.T) {
	t.Parallel()
	g := newRequestIDs()
	for i := 0; i < 1000; i++ {
		if id := g.next(); !ValidRequestID(id) {
			t.Fatalf("generated id %q is not valid", id)
		}
	}
}
