package user

import (
	"testing"

	"github.com/palisade-rpc/palisade/security/password"
)

func TestHashSlots(t *testing.T) {
	t.Parallel()
	lanes := func(n uint8) password.Params {
		p := password.DefaultParams()
		p.Parallelism = n
		return p
	}
	for _, c := range []struct {
		checks int
		p      password.Params
		procs  int
		want   int
	}{
		{4, lanes(1), 2, 1},    // this machine: one core left to the other calls
		{4, lanes(2), 2, 1},    // a 2-lane hash takes both: one at a time at least
		{4, lanes(1), 1, 1},    // one P: the hash takes it
		{4, lanes(1), 8, 4},    // bounded by the checks admitted
		{16, lanes(1), 8, 7},   // all but one P
		{16, lanes(2), 8, 3},   // 3 hashes keep 6 Ps busy
		{4096, lanes(1), 2, 1}, // cheap hashes: admitted by the thousand, one at a time
	} {
		if got := hashSlots(c.checks, c.p, c.procs); got != c.want {
			t.Errorf("hashSlots(%d checks, %d lanes, %d Ps) = %d, want %d", c.checks, c.p.Parallelism, c.procs, got, c.want)
		}
	}
	if got := DefaultMaxConcurrentChecks(password.DefaultParams()); got != 4 {
		t.Errorf("DefaultMaxConcurrentChecks(DefaultParams) = %d, want 4", got)
	}
	if got := DefaultMaxConcurrentChecks(password.Params{Memory: 1 << 20}); got != 1 {
		t.Errorf("DefaultMaxConcurrentChecks(1 GiB) = %d, want 1", got)
	}
}
