package sample_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is left running after
// they end: System.Close must stop both services and their background work.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
