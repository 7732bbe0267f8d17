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
		ok, retryAfter := l.Allow("alice", now)
		fmt.Println(ok, retryAfter)
		if ok {
			l.Failure("alice", now) // wrong password
		}
	}
	ok, _ := l.Allow("alice", start.Add(15*time.Minute))
	fmt.Println(ok)
	l.Reset("alice") // after a successful login
	// Output:
	// true 0s
	// true 0s
	// true 0s
	// false 12m0s
	// true
}
