// Package overtls_test holds the token package's tests that need a Palisade
// server and client over real mTLS on 127.0.0.1: the attack matrix (every
// forged, expired, misbound or malformed token refused as unauthenticated
// through rpc's chain) and the remote key source fetching a JWKS. They live
// apart from security/token so that package's own test binary, and the
// fuzz targets' instrumented build of it (make test-fuzz), do not link the
// server and what it links.
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
