package rpc

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/throttle"
)

// RateLimitPrincipals is how many principals WithRateLimit tracks at once.
// A principal idle long enough to have its whole burst back is forgotten;
// past the bound, the least recently seen principal is forgotten, and its
// next call finds a full burst.
const RateLimitPrincipals = 100_000

// rateLimitConfig is what WithRateLimit sets.
type rateLimitConfig struct {
	perSecond float64
	burst     int
	now       func() time.Time // tests set it through export_test.go
}

// WithRateLimit limits the calls each principal may make: the user (a
// verified token's subject) when a token came with the call, else the
// calling workload (its SPIFFE ID). Each principal has a token bucket of
// burst calls (burst ≤ 0: perSecond rounded up) refilled at perSecond; a
// unary call takes a token, a stream takes one when it opens. A call over
// the limit fails with resource_exhausted (HTTP 429 in the Connect
// protocol), a Retry-After header (trailer in gRPC) with the whole seconds
// to wait, and those seconds in the message; it never reaches the policy
// or the handler. perSecond ≤ 0 turns rate limiting off (the default).
//
// The limiter runs after authentication (it needs the principal) and
// before authorization, so a caller over its limit costs no policy
// evaluation; a unary call is limited before its body is read. It keeps no
// goroutine and bounded memory (see RateLimitPrincipals).
func WithRateLimit(perSecond float64, burst int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.rateLimit.perSecond, c.rateLimit.burst = perSecond, burst })
}

// rateLimiter is the interceptor WithRateLimit puts in the chain.
type rateLimiter struct {
	buckets *throttle.Buckets
	now     func() time.Time
}

var _ connect.Interceptor = (*rateLimiter)(nil)

// newRateLimiter returns the interceptor for l, or nil when l is off.
func newRateLimiter(l rateLimitConfig) *rateLimiter {
	if !(l.perSecond > 0) {
		return nil
	}
	burst := l.burst
	if burst <= 0 {
		burst = int(math.Min(math.Ceil(l.perSecond), math.MaxInt32))
	}
	now := l.now
	if now == nil {
		now = time.Now
	}
	return &rateLimiter{buckets: throttle.NewBuckets(l.perSecond, burst, RateLimitPrincipals), now: now}
}

// rateKey is the bucket of the principal in ctx: users and workloads are
// kept apart by a prefix, so no subject can share a workload's bucket.
func rateKey(ctx context.Context) string {
	p, ok := security.FromContext(ctx)
	switch {
	case !ok:
		return "none"
	case p.User != nil:
		return "user:" + p.User.Subject
	default:
		return "workload:" + p.Workload.ID.String()
	}
}

func (r *rateLimiter) take(ctx context.Context) error {
	ok, wait := r.buckets.Take(rateKey(ctx), r.now())
	if ok {
		return nil
	}
	secs := max(int64(math.Ceil(wait.Seconds())), 1)
	err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("rate limit exceeded: retry after %d s", secs))
	err.Meta().Set("Retry-After", strconv.FormatInt(secs, 10))
	return err
}

// WrapUnary implements connect.Interceptor: unary calls are limited by the
// server's request gate (Server.gate), before their body is read.
func (r *rateLimiter) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (r *rateLimiter) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (r *rateLimiter) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := r.take(ctx); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
