package overtls_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is left running after
// they end: servers, clients, watchers and reloaders must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
