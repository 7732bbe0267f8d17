package pgtest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the tests if a server's goroutine outlives its Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
