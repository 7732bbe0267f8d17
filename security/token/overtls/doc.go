// Package overtls holds the token package's tests that need a Palisade
// server and client over real mTLS on 127.0.0.1: the attack matrix (every
// forged, expired, misbound or malformed token refused as unauthenticated
// through rpc's chain) and the remote key source fetching a JWKS. They live
// apart from security/token so that package's own test binary, and the
// fuzz targets' instrumented build of it (make test-fuzz), do not link the
// server, gRPC and the policy engine. It has no code of its own.
package overtls
