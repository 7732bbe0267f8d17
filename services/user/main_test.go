package user_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/palisade-rpc/palisade/services/user"
)

// TestMain stops the package's PostgreSQL server (user.PG) after the tests, then
// fails them if any goroutine is left running: servers, clients, watchers,
// reloaders and change listeners must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(user.PG.StopAfter(m))
}
