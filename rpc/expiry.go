package rpc

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// ExpiryDrainWindow is how long before its peer's certificate expires a
// connection is asked to close: every response on it carries "Connection:
// close", which ends an HTTP/1.1 connection after the response and makes
// the HTTP/2 server send GOAWAY, finish the calls in flight and close. The
// client carries on over a new connection, made with its current —
// rotated — certificate, before the old connection is cut at expiry.
const ExpiryDrainWindow = time.Minute

// connExpiry closes a connection when its peer's certificate expires.
// Certificates are checked only at the handshake, and an HTTP/2 connection
// can outlive its client certificate by hours; without this, a client whose
// certificate was not renewed (because it was compromised, say) would keep
// calling over the connection it already had.
//
// It follows connections through http.Server.ConnState: when a connection
// first turns active its handshake is complete, and a timer is armed for the
// earliest NotAfter of the peer's verified chain. The timer is stopped when
// the connection closes; Serve stops the remaining ones when it returns.
// Within ExpiryDrainWindow of that time, drain asks the client to leave the
// connection gracefully first.
type connExpiry struct {
	log *slog.Logger

	mu     sync.Mutex
	timers map[net.Conn]*time.Timer
	closed bool
}

func newConnExpiry(log *slog.Logger) *connExpiry {
	return &connExpiry{log: log, timers: map[net.Conn]*time.Timer{}}
}

// connState is the http.Server ConnState hook.
func (e *connExpiry) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateActive:
		e.track(c)
	case http.StateClosed, http.StateHijacked:
		e.mu.Lock()
		if t, ok := e.timers[c]; ok {
			t.Stop()
			delete(e.timers, c)
		}
		e.mu.Unlock()
	}
}

func (e *connExpiry) track(c net.Conn) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, tracked := e.timers[c]; tracked || e.closed {
		return
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete || len(cs.VerifiedChains) == 0 {
		return
	}
	notAfter := earliestExpiry(cs.VerifiedChains[0])
	e.timers[c] = time.AfterFunc(time.Until(notAfter), func() {
		e.log.Warn("closing connection: the peer's certificate has expired",
			"remote", c.RemoteAddr().String(), "not_after", notAfter.UTC().Format(time.RFC3339))
		_ = c.Close()
	})
}

// drain is the HTTP middleware that marks responses on a connection whose
// peer certificate expires within ExpiryDrainWindow with "Connection: close".
func (e *connExpiry) drain(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && time.Until(earliestExpiry(r.TLS.VerifiedChains[0])) < ExpiryDrainWindow {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// stop stops every timer; connections tracked afterwards get none.
func (e *connExpiry) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for c, t := range e.timers {
		t.Stop()
		delete(e.timers, c)
	}
}

// earliestExpiry is when the first certificate of chain expires: the chain
// is no longer valid from then on.
func earliestExpiry(chain []*x509.Certificate) time.Time {
	t := chain[0].NotAfter
	for _, c := range chain[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}
