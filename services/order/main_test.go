package order_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/palisade-rpc/palisade/services/order"
)

// TestMain stops the package's PostgreSQL server (order.PG) after the
// tests, then fails them if any goroutine is left running: servers,
// clients, watchers and reloaders must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(order.PG.StopAfter(m))
}
