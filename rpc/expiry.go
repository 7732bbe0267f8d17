package rpc

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/security/mtls"
)

// ExpiryDrainWindow is how long before its peer's certificate expires a
// connection is asked to close: every response on it carries "Connection:
// close", which ends an HTTP/1.1 connection after the response and makes
// the HTTP/2 server send GOAWAY, finish the calls in flight and close. The
// client carries on over a new connection, made with its current —
// rotated — certificate, before the old connection is cut at expiry.
const ExpiryDrainWindow = time.Minute

// connGuard closes a connection when its peer's certificate expires or is
// revoked. Certificates are checked only at the handshake, and an HTTP/2
// connection can outlive its client certificate by hours; without this, a
// client whose certificate was not renewed, or was revoked (because it was
// compromised, say), would keep calling over the connection it already had.
//
// It follows connections through http.Server.ConnState: when a connection
// first turns active its handshake is complete; it is checked against the
// revocations then (they may have changed since its handshake), and a timer
// is armed for the earliest NotAfter of the peer's verified chain. The timer
// is stopped when the connection closes; Serve stops the remaining ones when
// it returns. Within ExpiryDrainWindow of that time, drain asks the client
// to leave the connection gracefully first. When the revocations change
// (watchRevocations), every connection is checked again.
type connGuard struct {
	log     *slog.Logger
	revoked func(verifiedChains [][]*x509.Certificate) error // nil: nothing is ever revoked

	mu     sync.Mutex
	conns  map[net.Conn]*guarded
	closed bool
}

type guarded struct {
	chains [][]*x509.Certificate
	timer  *time.Timer
}

func newConnGuard(log *slog.Logger, src mtls.Source) *connGuard {
	g := &connGuard{log: log, conns: map[net.Conn]*guarded{}}
	if rc, ok := src.(mtls.RevocationChecker); ok {
		g.revoked = rc.CheckRevocation
	}
	return g
}

// connState is the http.Server ConnState hook.
func (g *connGuard) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateActive:
		g.track(c)
	case http.StateClosed, http.StateHijacked:
		g.mu.Lock()
		if gc, ok := g.conns[c]; ok {
			gc.timer.Stop()
			delete(g.conns, c)
		}
		g.mu.Unlock()
	}
}

func (g *connGuard) track(c net.Conn) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	g.mu.Lock()
	if _, tracked := g.conns[c]; tracked || g.closed {
		g.mu.Unlock()
		return
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete || len(cs.VerifiedChains) == 0 {
		g.mu.Unlock()
		return
	}
	// Checked under the lock, with the connection not yet tracked: a CRL
	// that takes effect after this check finds it tracked when it is swept.
	if g.revoked != nil {
		if err := g.revoked(cs.VerifiedChains); err != nil {
			g.mu.Unlock()
			g.closeRevoked(c, err)
			return
		}
	}
	notAfter := earliestExpiry(cs.VerifiedChains[0])
	g.conns[c] = &guarded{chains: cs.VerifiedChains, timer: time.AfterFunc(time.Until(notAfter), func() {
		g.log.Warn("closing connection: the peer's certificate has expired",
			"remote", c.RemoteAddr().String(), "not_after", notAfter.UTC().Format(time.RFC3339))
		_ = c.Close()
	})}
	g.mu.Unlock()
}

// watchRevocations checks every open connection again each time w's
// revocations change, closing those of a revoked peer, until done is closed.
func (g *connGuard) watchRevocations(w mtls.RevocationWatcher, done <-chan struct{}) {
	watchRevocations(w, w.RevocationsChanged(), done, func() {
		revoked := map[net.Conn]error{}
		g.mu.Lock()
		for c, gc := range g.conns {
			if err := w.CheckRevocation(gc.chains); err != nil {
				gc.timer.Stop()
				delete(g.conns, c)
				revoked[c] = err
			}
		}
		g.mu.Unlock()
		// Closing sends TLS close_notify, which may wait on the peer: not
		// under the lock.
		for c, err := range revoked {
			g.closeRevoked(c, err)
		}
	})
}

func (g *connGuard) closeRevoked(c net.Conn, err error) {
	g.log.Warn("closing connection: the peer's certificate is revoked",
		"remote", c.RemoteAddr().String(), "reason", err.Error())
	_ = c.Close()
}

// drain is the HTTP middleware that marks responses on a connection whose
// peer certificate expires within ExpiryDrainWindow with "Connection: close".
func (g *connGuard) drain(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && time.Until(earliestExpiry(r.TLS.VerifiedChains[0])) < ExpiryDrainWindow {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// stop stops every timer; connections tracked afterwards get none.
func (g *connGuard) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for c, gc := range g.conns {
		gc.timer.Stop()
		delete(g.conns, c)
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
