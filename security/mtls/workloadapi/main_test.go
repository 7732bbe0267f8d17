package workloadapi_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is left running after
// they end: the source's watch must stop with Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
