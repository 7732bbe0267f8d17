package rpc

import (
	"context"
	"time"
)

// WithLookup makes a client with WithDNSEndpoints resolve host names with
// lookup, which returns a "host:port" the addresses ("ip:port") it resolves
// to: a DNS the test controls.
func WithLookup(lookup func(ctx context.Context, hostport string) ([]string, error)) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.lookup = lookup })
}

// WithClock makes a client's balancer tell time with now: ejections and
// DNS refreshes then end when the test says.
func WithClock(now func() time.Time) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.now = now })
}

// WithServerClock makes a server tell time with now where it decides to ask
// a client to leave a connection (connGuard.drain): how old the connection
// is, and whether a certificate on it expires within ExpiryDrainWindow.
func WithServerClock(now func() time.Time) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.now = now })
}

// WithRateLimitClock makes the rate limiter (WithRateLimit) tell time with
// now: buckets refill when the test says.
func WithRateLimitClock(now func() time.Time) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.rateLimit.now = now })
}
