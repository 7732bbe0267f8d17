package throttle_test

import (
	"fmt"
	"time"

	"github.com/palisade-rpc/palisade/security/throttle"
)

func Example() {
	// At most 3 failed logins per username in 15 minutes, tracking up to
	// 100 000 usernames.
	l := throttle.New(3, 15*time.Minute, 100_000)
	start := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

	for i := range 4 {
		now := start.Add(time.Duration(i) * time.Minute)
		r, retryAfter := l.Reserve("alice", now) // before checking the password
		fmt.Println(r != nil, retryAfter)
		r.Fail(now) // wrong password (a refused attempt's nil r does nothing)
	}
	r, _ := l.Reserve("alice", start.Add(15*time.Minute))
	fmt.Println(r != nil)
	r.Release() // right password: frees its slot, keeps the failures
	// Output:
	// true 0s
	// true 0s
	// true 0s
	// false 12m0s
	// true
}
