package rpc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
)

// WithMaxConnectionAge makes the server ask each client to leave a
// connection once it is about age old, so that the long-lived HTTP/2
// connections of a fleet's clients spread again over the replicas behind a
// load balancer that balances connections, not calls (a Kubernetes
// ClusterIP Service, a TCP load balancer). Each connection's age is drawn
// within ±10% of age, so connections made together do not all move at
// once.
//
// A connection past its age is asked to leave the way a connection whose
// certificate is about to expire is (see ExpiryDrainWindow): the response
// to every call that starts on it carries "Connection: close", for which
// the HTTP/2 server sends GOAWAY — the client opens a new connection for
// its next calls, and the calls in flight finish. A call the client sent
// while the GOAWAY was on its way is refused by the server and sent again
// over a new connection by Go's HTTP/2 client when its body can be replayed
// (unary calls and server streams); a client or bidi stream opened in that
// instant fails, as at any GOAWAY.
//
// Calls in flight have grace to finish, counted from the connection's age
// or from their start, whichever is later. Streams still open then end with
// unavailable ("connection reached its maximum age"), as at a drain, so
// their clients open them again over a new connection; calls still running
// StreamWriteGrace later (at once when no stream was open) are cut by
// closing the connection, which the server logs. An idle connection past
// its age is not closed, which could cut a call on its way: it is asked to
// leave at its next call, or closed by the idle timeout (WithIdleTimeout)
// with a GOAWAY.
//
// age ≤ 0 leaves connections alone: the default. A negative grace is an
// error of NewServer.
func WithMaxConnectionAge(age, grace time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxConnAge, c.maxConnAgeGrace = age, grace })
}

// maxAgeJitter is the fraction by which a connection's maximum age may
// differ from the configured one, either way.
const maxAgeJitter = 0.1

// jitteredAge returns age moved at random by up to maxAgeJitter of it.
func jitteredAge(age time.Duration) time.Duration {
	return age + time.Duration((rand.Float64()*2-1)*maxAgeJitter*float64(age))
}

// connAges ends connections at their maximum age (WithMaxConnectionAge).
// connGuard calls it from its http.Server hooks: connContext when a
// connection is accepted, drain for each call, connState when a connection
// closes. It is nil when the option is off.
type connAges struct {
	connGuard *connGuard // for its logger
	age       time.Duration
	grace     time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]*agedConn
	closed bool
}

// agedConn is the age of one connection and the calls running on it.
type agedConn struct {
	ages     *connAges
	conn     net.Conn
	accepted time.Time
	deadline time.Time // the connection's maximum age, jittered

	// Guarded by ages.mu.
	running   int                         // calls in flight (handlers that have not returned)
	streams   map[*guardedStream]struct{} // the streams among them
	lastStart time.Time                   // start of the last call that began past the deadline
	timer     *time.Timer                 // nil while no cut is due: idle past the deadline
	ending    bool                        // its streams were ended; calls still running are cut next
}

// maxAgeError is how a stream still open on a connection past its age and
// grace ends.
func maxAgeError() error {
	return connect.NewError(connect.CodeUnavailable, errors.New("connection reached its maximum age"))
}

// addStream counts st among the streams of the connection of ctx, if it has
// an age, until the returned func is called.
func addStream(ctx context.Context, st *guardedStream) (remove func()) {
	ac, ok := ctx.Value(agedConnKey{}).(*agedConn)
	if !ok {
		return func() {}
	}
	a := ac.ages
	a.mu.Lock()
	defer a.mu.Unlock()
	if ac.streams == nil {
		ac.streams = map[*guardedStream]struct{}{}
	}
	ac.streams[st] = struct{}{}
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		delete(ac.streams, st)
	}
}

type agedConnKey struct{}

func newConnAges(g *connGuard, age, grace time.Duration) (*connAges, error) {
	if age <= 0 {
		return nil, nil
	}
	if grace < 0 {
		return nil, fmt.Errorf("rpc: WithMaxConnectionAge: negative grace %s", grace)
	}
	return &connAges{connGuard: g, age: age, grace: grace, conns: map[net.Conn]*agedConn{}}, nil
}

// accepted gives a new connection its deadline, and arms the cut for grace
// after it.
func (a *connAges) accepted(ctx context.Context, c net.Conn) context.Context {
	now := time.Now()
	ac := &agedConn{ages: a, conn: c, accepted: now, deadline: now.Add(jitteredAge(a.age))}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ctx
	}
	a.conns[c] = ac
	ac.timer = time.AfterFunc(ac.deadline.Add(a.grace).Sub(now), func() { a.due(ac) })
	return context.WithValue(ctx, agedConnKey{}, ac)
}

// call counts a call on its connection while it runs; past the
// connection's deadline its response asks the client to leave.
func (a *connAges) call(w http.ResponseWriter, r *http.Request, next http.Handler) {
	ac, ok := r.Context().Value(agedConnKey{}).(*agedConn)
	if !ok {
		next.ServeHTTP(w, r)
		return
	}
	now := time.Now()
	a.mu.Lock()
	ac.running++
	if !now.Before(ac.deadline) {
		ac.lastStart = now
		if ac.timer == nil && !a.closed {
			ac.timer = time.AfterFunc(a.grace, func() { a.due(ac) })
		}
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		ac.running--
		a.mu.Unlock()
	}()
	if !now.Before(ac.deadline) {
		w.Header().Set("Connection", "close")
	}
	next.ServeHTTP(w, r)
}

// due runs when a connection's calls may have had their grace. It waits
// longer for calls that started later; leaves an idle connection to its
// next call (which is asked to leave) or to the idle timeout; ends the
// streams still open with unavailable, and gives them StreamWriteGrace to
// say so; and then closes the connection if calls still run.
func (a *connAges) due(ac *agedConn) {
	a.mu.Lock()
	if a.closed || a.conns[ac.conn] != ac {
		a.mu.Unlock()
		return
	}
	now := time.Now()
	start := ac.deadline
	if ac.lastStart.After(start) {
		start = ac.lastStart
	}
	if wait := start.Add(a.grace).Sub(now); wait > 0 && !ac.ending {
		ac.timer = time.AfterFunc(wait, func() { a.due(ac) })
		a.mu.Unlock()
		return
	}
	running := ac.running
	if running == 0 {
		ac.timer, ac.ending = nil, false
		a.mu.Unlock()
		return
	}
	if !ac.ending && len(ac.streams) > 0 {
		streams := make([]*guardedStream, 0, len(ac.streams))
		for st := range ac.streams {
			streams = append(streams, st)
		}
		ac.ending = true
		ac.timer = time.AfterFunc(StreamWriteGrace, func() { a.due(ac) })
		a.mu.Unlock()
		a.connGuard.log.Info("ending streams: their connection is past its maximum age and grace",
			"remote", ac.conn.RemoteAddr().String(), "streams", len(streams), "grace", a.grace.String())
		for _, st := range streams {
			st.end(maxAgeError())
		}
		return
	}
	ac.timer = nil
	delete(a.conns, ac.conn)
	a.mu.Unlock()
	a.connGuard.log.Warn("closing connection: calls still running past its maximum age and grace",
		"remote", ac.conn.RemoteAddr().String(), "calls", running,
		"age", now.Sub(ac.accepted).Round(time.Millisecond).String(), "grace", a.grace.String())
	_ = ac.conn.Close()
}

// gone forgets a closed connection.
func (a *connAges) gone(c net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ac, ok := a.conns[c]; ok {
		if ac.timer != nil {
			ac.timer.Stop()
		}
		delete(a.conns, c)
	}
}

// stop stops every timer; connections accepted afterwards get none.
func (a *connAges) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for c, ac := range a.conns {
		if ac.timer != nil {
			ac.timer.Stop()
		}
		delete(a.conns, c)
	}
}
