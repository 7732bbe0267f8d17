package rpc

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
)

// A client with several endpoints (WithEndpoints, WithDNSEndpoints) sends
// its calls through a balancer: an http.RoundTripper that picks an endpoint
// for each request, ejects endpoints that fail, and retries a request on
// another endpoint when that is safe. What it does, in the order a call
// meets it:
//
//   - Picking: power of two choices. Of the endpoints in rotation that the
//     call has not tried, two are drawn at random and the one with fewer
//     unary calls in flight is taken. Streams are not counted: a change
//     feed open for hours is not load. When every endpoint is ejected, the
//     call tries the one whose ejection ends first rather than fail without
//     trying.
//   - Connections: each endpoint has its own HTTP/2 transport, so its own
//     pool, dialed and verified as a single-endpoint client's (mTLS, the
//     server's SPIFFE ID, the URL's host name) and guarded per connection
//     (serverGuard). When the client's own certificate changes, an
//     endpoint's next call moves it to a new pool, so that every endpoint is
//     reached with the certificate a token exchanged now is bound to; the
//     old pool's calls finish and its connections are closed once idle.
//   - Ejection: an endpoint whose dial or handshake fails, or whose
//     connection breaks (reset, unexpected EOF, GOAWAY with the connection
//     closed), leaves the rotation for 1s, doubling on each failure in a row
//     up to 30s. Once that has passed, the next call that looks starts a
//     probe in the background — a dial and a handshake, nothing sent — and
//     the endpoint returns when it succeeds (or when a call it was tried for
//     anyway gets an answer); a failed probe ejects it for twice as long. A
//     response resets the count. Calls that fail together count once.
//   - Retries, at most maxAttempts, each on an endpoint the call has not
//     tried, within the call's deadline: a request that never left (its
//     dial or handshake failed) is retried whatever its procedure; a request
//     that may have been sent and got no response is retried only when its
//     procedure is idempotent (connect.IdempotencyNoSideEffects or
//     IdempotencyIdempotent, from the .proto's idempotency_level), or it is
//     a GET. A call whose response had begun is never retried, nor is a
//     client or bidi stream (its messages cannot be replayed), nor a call
//     that ends with an error the server sent.
//   - DNS (WithDNSEndpoints): a host name is resolved to all its addresses,
//     each an endpoint verified for the name; again every refresh interval,
//     and at most once a second while every address is ejected, in the
//     background. A failed or empty resolution keeps the addresses the host
//     had.

const (
	// DefaultDNSRefresh is how often WithDNSEndpoints resolves host names
	// again when given no interval.
	DefaultDNSRefresh = 30 * time.Second

	ejectMin    = time.Second      // first ejection
	ejectMax    = 30 * time.Second // longest ejection
	maxAttempts = 3                // tries of one request
	// reresolveEjected bounds how often the names are resolved again while
	// every address is ejected.
	reresolveEjected = time.Second
)

// target is one endpoint URL: requests for it carry host; it is verified
// for name.
type target struct {
	host    string // as in the URL and the requests: "name:port" or "name"
	name    string // the host name or IP address, without the port
	addr    string // what a dial without resolution connects to: name:port
	literal bool   // name is an IP address: never resolved
}

// parseTargets validates the endpoint URLs and drops duplicates. All must
// be https URLs with a host, and share one path.
func parseTargets(urls []string) ([]*target, error) {
	var (
		targets []*target
		path    string
	)
	for i, raw := range urls {
		// The messages name the URL without its user info, which may hold a
		// password.
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			return nil, fmt.Errorf("rpc: client: endpoint %d is not a URL", i+1)
		case u.User != nil:
			return nil, fmt.Errorf("rpc: client: endpoint %s: an endpoint has no user info", u.Redacted())
		case u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "":
			return nil, fmt.Errorf("rpc: client: endpoint %q must be https://host:port", raw)
		}
		p := strings.TrimRight(u.Path, "/")
		if i == 0 {
			path = p
		} else if p != path {
			return nil, fmt.Errorf("rpc: client: endpoint %q has another path than the first endpoint's", raw)
		}
		if slices.ContainsFunc(targets, func(t *target) bool { return t.host == u.Host }) {
			continue
		}
		port := u.Port()
		if port == "" {
			port = "443"
		}
		name := u.Hostname()
		targets = append(targets, &target{host: u.Host, name: name, addr: net.JoinHostPort(name, port), literal: net.ParseIP(name) != nil})
	}
	if len(targets) == 0 {
		return nil, errors.New("rpc: client: no endpoint")
	}
	return targets, nil
}

// endpoint is one address of a target.
type endpoint struct {
	target *target
	addr   string // dialed: the target's addr, or one its name resolved to

	// Guarded by balancer.mu.
	tr       *http.Transport
	gen      uint64 // of tr, counted over the endpoint's transports
	leaf     []byte // the client certificate tr's connections present (DER), once one is made
	inflight int    // unary calls
	failures int    // in a row
	until    time.Time
	epoch    uint64 // ejections so far: a call's outcome counts only in the epoch it started in
	probing  bool
}

// state reports whether ep is in the rotation at now, and, if it is
// ejected, whether its ejection has passed (it is to be probed).
func (ep *endpoint) state(now time.Time) (inRotation, due bool) {
	if ep.until.IsZero() {
		return true, false
	}
	return false, !now.Before(ep.until)
}

// lease is an endpoint picked for one request.
type lease struct {
	ep      *endpoint
	tr      *http.Transport
	epoch   uint64
	counted bool
}

// balancer is the RoundTripper of a client with several endpoints.
type balancer struct {
	dialer   *tlsDialer
	targets  []*target
	hosts    map[string]bool // the targets' hosts: the requests balanced
	fallback http.RoundTripper
	log      *slog.Logger
	now      func() time.Time
	dns      bool
	refresh  time.Duration
	lookup   func(ctx context.Context, hostport string) ([]string, error)

	mu         sync.Mutex
	endpoints  []*endpoint // replaced, never changed in place
	resolvedAt time.Time
	resolving  chan struct{} // closed when the running resolution ends; nil when none runs
	lastErr    error         // of the last resolution that left no endpoint
	lastErrAt  time.Time
	background int        // probes and resolutions running
	idle       *sync.Cond // on mu: signalled when background drops to 0
}

func newBalancer(d *tlsDialer, targets []*target, cfg clientConfig) *balancer {
	b := &balancer{
		dialer:   d,
		targets:  targets,
		hosts:    map[string]bool{},
		fallback: d.transport(nil),
		log:      cfg.logger,
		now:      cfg.now,
		dns:      cfg.dnsRefresh > 0,
		refresh:  cfg.dnsRefresh,
		lookup:   cfg.lookup,
	}
	b.idle = sync.NewCond(&b.mu)
	if b.now == nil {
		b.now = time.Now
	}
	if b.lookup == nil {
		b.lookup = lookupHost
	}
	for _, t := range targets {
		b.hosts[t.host] = true
		if !b.dns {
			b.endpoints = append(b.endpoints, b.newEndpoint(t, t.addr))
		}
	}
	return b
}

func (b *balancer) newEndpoint(t *target, addr string) *endpoint {
	ep := &endpoint{target: t, addr: addr}
	ep.tr = b.endpointTransport(ep, ep.gen)
	return ep
}

// endpointTransport is ep's transport number gen: it dials ep.addr whatever
// the request's host, verifies the server for the target's name, marks its
// dial failures (the request never left), and notes the client certificate
// its connections present.
func (b *balancer) endpointTransport(ep *endpoint, gen uint64) *http.Transport {
	return b.dialer.transport(func(ctx context.Context, network, _ string) (net.Conn, error) {
		var presented *tls.Certificate
		conn, err := b.dialer.dial(ctx, network, ep.addr, ep.target.name, func(c *tls.Certificate) { presented = c })
		if err != nil {
			return nil, &dialError{err: err}
		}
		if presented != nil && len(presented.Certificate) > 0 {
			b.mu.Lock()
			if ep.gen == gen {
				ep.leaf = presented.Certificate[0]
			}
			b.mu.Unlock()
		}
		return conn, nil
	})
}

// dialError is a failure to connect or to complete the handshake: the
// request was never written.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func neverSent(err error) bool {
	var d *dialError
	return errors.As(err, &d)
}

// connectionFailed reports whether err says the endpoint, rather than the
// request, failed: a dial or handshake, a connection that broke, a TLS
// alert from the server (which, in TLS 1.3, refuses a client certificate
// after the client's handshake is done).
func connectionFailed(err error) bool {
	if neverSent(err) || transportBroke(err) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// callInfo is what the balancer needs to know of a call: markCalls puts it
// in the call's context.
type callInfo struct {
	idempotent bool // its procedure has no side effects, or is idempotent
	stream     bool
}

type callInfoKey struct{}

var (
	unaryCall           = &callInfo{}
	idempotentUnaryCall = &callInfo{idempotent: true}
	streamCall          = &callInfo{stream: true}
	idempotentStream    = &callInfo{idempotent: true, stream: true}
)

func callInfoOf(ctx context.Context) *callInfo {
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		return ci
	}
	return unaryCall
}

func idempotent(spec connect.Spec) bool {
	return spec.IdempotencyLevel == connect.IdempotencyNoSideEffects || spec.IdempotencyLevel == connect.IdempotencyIdempotent
}

// markCalls tells the balancer whether a call may be retried after its
// request may have been sent, and whether it is a stream.
type markCalls struct{}

func (markCalls) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		info := unaryCall
		if idempotent(req.Spec()) {
			info = idempotentUnaryCall
		}
		return next(context.WithValue(ctx, callInfoKey{}, info), req)
	}
}

func (markCalls) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		info := streamCall
		if idempotent(spec) {
			info = idempotentStream
		}
		return next(context.WithValue(ctx, callInfoKey{}, info), spec)
	}
}

func (markCalls) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// RoundTrip sends r to an endpoint, and again to another while it is safe
// (see the top of the file). Requests for a host that is not an endpoint's
// go to that host, as a single-endpoint client's would.
func (b *balancer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL == nil || r.URL.Scheme != "https" || !b.hosts[r.URL.Host] {
		return b.fallback.RoundTrip(r)
	}
	ctx := r.Context()
	info := callInfoOf(ctx)
	mayRepeat := info.idempotent || r.Method == http.MethodGet || r.Method == http.MethodHead
	replayable := r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
	body := r.Body
	var (
		tried   []*endpoint
		lastErr error
	)
	for attempt := 1; ; attempt++ {
		l, err := b.pick(ctx, tried, !info.stream)
		if err != nil || l == nil {
			if body != nil { // not handed to a transport, which would close it
				_ = body.Close()
			}
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, err
		}
		tried = append(tried, l.ep)
		out := *r
		u := *r.URL
		u.Host = l.ep.target.host
		out.URL, out.Host, out.Body = &u, u.Host, body
		res, err := l.tr.RoundTrip(&out)
		if err == nil {
			b.answered(l)
			res.Request = r
			res.Body = &leasedBody{ReadCloser: res.Body, b: b, l: l}
			return res, nil
		}
		b.release(l)
		if ctx.Err() != nil {
			return nil, err
		}
		b.failed(l, err)
		if attempt == maxAttempts || !replayable || !(neverSent(err) || mayRepeat) {
			return nil, err
		}
		lastErr = err
		if r.GetBody != nil {
			if body, err = r.GetBody(); err != nil {
				return nil, lastErr
			}
		}
		b.log.Debug("retrying a request on another endpoint", "endpoint", l.ep.addr, "host", l.ep.target.host, "error", lastErr.Error())
	}
}

// pick leases an endpoint the request has not tried (nil when none is
// left), counting a unary call in flight on it. It starts the probes and
// the resolutions that are due.
func (b *balancer) pick(ctx context.Context, tried []*endpoint, count bool) (*lease, error) {
	if err := b.resolveFirst(ctx); err != nil {
		return nil, err
	}
	var leaf []byte
	if c, err := b.dialer.src.Certificate(); err == nil && c != nil && len(c.Certificate) > 0 {
		leaf = c.Certificate[0]
	}
	var retired []*http.Transport
	defer func() {
		for _, tr := range retired {
			tr.CloseIdleConnections()
		}
	}()

	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var (
		a, c      *endpoint // the two choices
		n         int       // candidates seen
		fallback  *endpoint // the untried ejected endpoint whose ejection ends first
		anyInRota bool
	)
	for _, ep := range b.endpoints {
		inRotation, due := ep.state(now)
		if due && !ep.probing {
			b.startProbeLocked(ep)
		}
		if slices.Contains(tried, ep) {
			anyInRota = anyInRota || inRotation
			continue
		}
		if !inRotation {
			if fallback == nil || ep.until.Before(fallback.until) {
				fallback = ep
			}
			continue
		}
		anyInRota = true
		// Reservoir sampling of two distinct candidates.
		n++
		switch {
		case n == 1:
			a = ep
		case n == 2:
			c = ep
		default:
			if k := rand.N(n); k == 0 {
				a = ep
			} else if k == 1 {
				c = ep
			}
		}
	}
	if !anyInRota && b.dns && now.Sub(b.resolvedAt) >= reresolveEjected {
		b.startResolveLocked()
	} else if b.dns && now.Sub(b.resolvedAt) >= b.refresh {
		b.startResolveLocked()
	}
	ep := a
	if c != nil && (c.inflight < a.inflight || (c.inflight == a.inflight && rand.N(2) == 0)) {
		ep = c
	}
	if ep == nil {
		ep = fallback
	}
	if ep == nil {
		return nil, nil
	}
	if leaf != nil && ep.leaf != nil && !bytes.Equal(leaf, ep.leaf) {
		// The client's certificate changed since ep's connections were made.
		retired = append(retired, ep.tr)
		ep.gen++
		ep.leaf = nil
		ep.tr = b.endpointTransport(ep, ep.gen)
	}
	if count {
		ep.inflight++
	}
	return &lease{ep: ep, tr: ep.tr, epoch: ep.epoch, counted: count}, nil
}

// answered notes that l's endpoint answered: in the epoch the request
// started in, that ends its ejection and its run of failures.
func (b *balancer) answered(l *lease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := l.ep
	if ep.epoch != l.epoch || (ep.failures == 0 && ep.until.IsZero()) {
		return
	}
	if !ep.until.IsZero() {
		b.log.Info("endpoint back in rotation: it answered", "endpoint", ep.addr, "host", ep.target.host)
	}
	ep.failures, ep.until = 0, time.Time{}
}

func (b *balancer) release(l *lease) {
	if !l.counted {
		return
	}
	b.mu.Lock()
	l.ep.inflight--
	b.mu.Unlock()
}

// failed ejects l's endpoint if err says its connection failed, unless it
// was ejected since the request started (calls failing together count
// once) or is still ejected (the request was sent to it anyway).
func (b *balancer) failed(l *lease, err error) {
	if !connectionFailed(err) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := l.ep
	if inRotation, due := ep.state(b.now()); ep.epoch != l.epoch || !(inRotation || due) {
		return
	}
	b.ejectLocked(ep, err)
}

func (b *balancer) ejectLocked(ep *endpoint, err error) {
	ep.failures++
	ep.epoch++
	backoff := ejectMax
	if ep.failures <= 6 {
		backoff = min(ejectMin<<(ep.failures-1), ejectMax)
	}
	ep.until = b.now().Add(backoff)
	b.log.Warn("endpoint ejected", "endpoint", ep.addr, "host", ep.target.host,
		"error", err.Error(), "failures", ep.failures, "for", backoff.String())
}

// startProbeLocked dials ep in the background; it returns to the rotation
// if the dial and handshake succeed. b.mu is held.
func (b *balancer) startProbeLocked(ep *endpoint) {
	ep.probing = true
	b.background++
	epoch := ep.epoch
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), b.dialer.backgroundTimeout())
		defer cancel()
		conn, err := b.dialer.dial(ctx, "tcp", ep.addr, ep.target.name, nil)
		if conn != nil {
			_ = conn.Close()
		}
		b.mu.Lock()
		defer b.doneLocked()
		ep.probing = false
		if ep.epoch != epoch {
			return
		}
		if err != nil {
			b.ejectLocked(ep, fmt.Errorf("probe: %w", err))
			return
		}
		ep.until = time.Time{}
		b.log.Info("endpoint back in rotation: its probe connected", "endpoint", ep.addr, "host", ep.target.host)
	}()
}

// doneLocked ends one background task and unlocks b.mu.
func (b *balancer) doneLocked() {
	b.background--
	if b.background == 0 {
		b.idle.Broadcast()
	}
	b.mu.Unlock()
}

// CloseIdleConnections waits for the probes and resolutions in progress,
// then closes every idle connection.
func (b *balancer) CloseIdleConnections() {
	b.mu.Lock()
	for b.background > 0 {
		b.idle.Wait()
	}
	eps := b.endpoints
	b.mu.Unlock()
	for _, ep := range eps {
		b.mu.Lock()
		tr := ep.tr
		b.mu.Unlock()
		tr.CloseIdleConnections()
	}
	if ci, ok := b.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// leasedBody is a response body that gives its lease back when it is
// closed or read to its end, and ejects the endpoint if the connection
// breaks while it is read.
type leasedBody struct {
	io.ReadCloser
	b    *balancer
	l    *lease
	done atomic.Bool
}

func (lb *leasedBody) Read(p []byte) (int, error) {
	n, err := lb.ReadCloser.Read(p)
	if err != nil {
		if err != io.EOF {
			lb.b.failed(lb.l, err)
		}
		lb.finish()
	}
	return n, err
}

func (lb *leasedBody) Close() error {
	err := lb.ReadCloser.Close()
	lb.finish()
	return err
}

func (lb *leasedBody) finish() {
	if lb.done.CompareAndSwap(false, true) {
		lb.b.release(lb.l)
	}
}

// resolveFirst resolves the names when no endpoint is known yet (DNS mode,
// before the first resolution succeeded), in the caller's context; calls
// arriving meanwhile wait for it. After a failure, calls fail at once with
// its error for a second, so that a name that does not resolve is not
// looked up on every call.
func (b *balancer) resolveFirst(ctx context.Context) error {
	if !b.dns {
		return nil
	}
	for {
		b.mu.Lock()
		if len(b.endpoints) > 0 {
			b.mu.Unlock()
			return nil
		}
		if b.lastErr != nil && b.now().Sub(b.lastErrAt) < reresolveEjected {
			err := b.lastErr
			b.mu.Unlock()
			return err
		}
		if ch := b.resolving; ch != nil {
			b.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ch := make(chan struct{})
		b.resolving = ch
		b.mu.Unlock()
		err := b.resolve(ctx)
		b.mu.Lock()
		b.resolving = nil
		close(ch)
		b.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// startResolveLocked resolves the names again in the background, unless a
// resolution runs. b.mu is held.
func (b *balancer) startResolveLocked() {
	if b.resolving != nil {
		return
	}
	ch := make(chan struct{})
	b.resolving = ch
	b.background++
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), b.dialer.backgroundTimeout())
		defer cancel()
		_ = b.resolve(ctx)
		b.mu.Lock()
		defer b.doneLocked()
		b.resolving = nil
		close(ch)
	}()
}

// resolve looks up every target's name and replaces the endpoints with its
// addresses, keeping the state of those it had. A target whose lookup fails
// or finds nothing keeps the endpoints it had. It fails if no endpoint is
// left.
func (b *balancer) resolve(ctx context.Context) error {
	found := make([][]string, len(b.targets))
	var errs []error
	for i, t := range b.targets {
		if t.literal {
			found[i] = []string{t.addr}
			continue
		}
		addrs, err := b.lookup(ctx, t.addr)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no addresses")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve %s: %w", t.name, err))
			b.log.Warn("resolving an endpoint's host failed; keeping its addresses", "host", t.host, "error", err.Error())
			continue
		}
		found[i] = addrs
	}

	var removed []*http.Transport
	b.mu.Lock()
	old := map[*target]map[string]*endpoint{}
	for _, ep := range b.endpoints {
		if old[ep.target] == nil {
			old[ep.target] = map[string]*endpoint{}
		}
		old[ep.target][ep.addr] = ep
	}
	var eps []*endpoint
	for i, t := range b.targets {
		if found[i] == nil { // failed: keep what it had
			for _, ep := range b.endpoints {
				if ep.target == t {
					eps = append(eps, ep)
				}
			}
			continue
		}
		for _, addr := range found[i] {
			if ep, ok := old[t][addr]; ok {
				eps = append(eps, ep)
				delete(old[t], addr)
			} else {
				eps = append(eps, b.newEndpoint(t, addr))
			}
		}
		if changed := len(old[t]) > 0 || len(found[i]) != countTarget(b.endpoints, t); changed {
			b.log.Info("endpoint addresses resolved", "host", t.host, "addresses", strings.Join(found[i], ","))
		}
		for _, ep := range old[t] {
			removed = append(removed, ep.tr)
		}
	}
	b.endpoints = eps
	b.resolvedAt = b.now()
	var err error
	if len(eps) == 0 {
		err = fmt.Errorf("rpc: no endpoint: %w", errors.Join(errs...))
		if ctx.Err() == nil { // the caller's deadline says nothing of the name
			b.lastErr, b.lastErrAt = err, b.resolvedAt
		}
	}
	b.mu.Unlock()
	// Calls in flight on a removed endpoint finish; its idle connections go.
	for _, tr := range removed {
		tr.CloseIdleConnections()
	}
	return err
}

func countTarget(eps []*endpoint, t *target) int {
	n := 0
	for _, ep := range eps {
		if ep.target == t {
			n++
		}
	}
	return n
}

// lookupHost resolves hostport's host to its IPv4 and IPv6 addresses, each
// with hostport's port, sorted.
func lookupHost(ctx context.Context, hostport string) ([]string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, 0, len(ips))
	for _, ip := range ips {
		addrs = append(addrs, net.JoinHostPort(ip.Unmap().String(), port))
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}
