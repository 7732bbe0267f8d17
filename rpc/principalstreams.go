package rpc

import (
	"context"
	"fmt"
	"sync"

	"connectrpc.com/connect"
)

// DefaultMaxStreamsPerPrincipal is how many streams one principal may have
// open at once unless WithMaxStreamsPerPrincipal says otherwise. The
// streams that stay open legitimately fit: all the replicas of a service
// share one workload principal, and the sample order service's replicas
// each hold one WatchUserChanges open to the user service, so 32 leaves
// room for 16 replicas even while a rolling update runs old and new side
// by side; a user holds a TrackOrders stream per client. With
// DefaultMaxStreamBytes, one principal's open client streams can deliver
// at most 32 × 8 MiB = 256 MiB at once.
const DefaultMaxStreamsPerPrincipal = 32

// WithMaxStreamsPerPrincipal caps the streams (client, server and bidi) one
// principal may have open at once on the server, over all its connections
// and services (default DefaultMaxStreamsPerPrincipal; 0 or less: no cap).
// The principal is the one WithRateLimit counts: the user when a token
// came with the call, else the calling workload. A stream past the cap
// fails with resource_exhausted when it opens, before the policy is asked
// or the handler runs; the caller's other streams, and other principals,
// are not affected. Unary calls are not counted.
func WithMaxStreamsPerPrincipal(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxStreamsPerPrincipal = n })
}

// principalStreams is the interceptor that counts each principal's open
// streams. It holds an entry only for a principal with a stream open.
type principalStreams struct {
	max int

	mu   sync.Mutex
	open map[string]int
}

var _ connect.Interceptor = (*principalStreams)(nil)

func newPrincipalStreams(n int) *principalStreams {
	return &principalStreams{max: n, open: map[string]int{}}
}

func (p *principalStreams) acquire(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open[key] >= p.max {
		return false
	}
	p.open[key]++
	return true
}

func (p *principalStreams) release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open[key] <= 1 {
		delete(p.open, key)
		return
	}
	p.open[key]--
}

func (p *principalStreams) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (p *principalStreams) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (p *principalStreams) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		key := rateKey(ctx)
		if !p.acquire(key) {
			return connect.NewError(connect.CodeResourceExhausted,
				fmt.Errorf("too many open streams: a caller may have at most %d at once", p.max))
		}
		defer p.release(key)
		return next(ctx, conn)
	}
}
