package rpc

import (
	"testing"
	"time"
)

// TestJitteredAge: connections' ages spread over ±10% of the configured
// one, so that connections made together are not all asked to leave at
// once.
func TestJitteredAge(t *testing.T) {
	const age = time.Minute
	lo, hi := age, age
	for range 10_000 {
		d := jitteredAge(age)
		if d < age*9/10 || d > age*11/10 {
			t.Fatalf("jittered age %s, want within ±10%% of %s", d, age)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	// 10,000 draws: each end of the range is reached within 1% of it.
	if lo > age*91/100 || hi < age*109/100 {
		t.Fatalf("ages from %s to %s, want them spread over %s to %s", lo, hi, age*9/10, age*11/10)
	}
}
