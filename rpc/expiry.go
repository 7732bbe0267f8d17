package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-rpc/palisade/security/mtls"
)

// ExpiryDrainWindow is how long before the client's certificate on a
// connection, or the server's, expires the server asks the client to leave
// it: every response on it carries "Connection: close", which ends an
// HTTP/1.1 connection after the response and makes the HTTP/2 server send
// GOAWAY, finish the calls in flight and close. The client carries on over
// a new connection, made with the current — rotated — certificates, before
// the old connection is cut at expiry. A connection made within the window
// is asked to leave only once it has been open for a second.
const ExpiryDrainWindow = time.Minute

// drainMinAge is how long a connection is left open before drain asks its
// client to leave it.
//
// A client that did not rotate in time comes back with the same expiring
// certificate (or finds the server's unrotated one); asking it to leave
// each new connection after its first response, as drain once did, made it
// open one connection per response until expiry. And each of those
// GOAWAYs races the calls the client is sending on the connection: net/http
// names the last stream it read, and the streams sent after it are refused
// unprocessed. The client's transport sends a refused call again on
// another connection — at once the first time, after 1s, 2s, 4s… the next
// ones — and when that connection is asked to leave too, the call can be
// refused there again: under load GetUser calls took up to 5.6s (services'
// upstream timeout is 3s) though every server answered. A call refused on
// a connection now moves to a new one that is not asked to leave for
// drainMinAge, and a client that did not rotate makes one connection a
// second, not one per call; a client that rotated still moves within a
// second.
const drainMinAge = time.Second

// connGuard closes a connection when its peer's certificate expires or is
// revoked, or when the certificate the server presented on it expires.
// Certificates are checked only at the handshake, and an HTTP/2 connection
// can outlive its client certificate by hours; without this, a client whose
// certificate was not renewed, or was revoked (because it was compromised,
// say), would keep calling over the connection it already had.
//
// It follows connections through http.Server.ConnState: when a connection
// first turns active its handshake is complete; it is checked against the
// revocations then (they may have changed since its handshake), and a timer
// is armed for the earliest NotAfter of the peer's verified chain and of
// the server's own certificate on the connection (which tlsConfig records
// at the handshake: a server that rotated its certificate still has
// connections made under the old one). The timer is stopped when the
// connection closes; Serve stops the remaining ones when it returns. Within
// ExpiryDrainWindow of that time, drain asks the client to leave the
// connection gracefully first, so a client that rotated, or a server that
// did, moves to a new connection without a failed call (a connection made
// within the window is left open for drainMinAge first). When the
// revocations change (watchRevocations), every connection is checked again.
type connGuard struct {
	log     *slog.Logger
	now     func() time.Time                                 // drain's clock
	revoked func(verifiedChains [][]*x509.Certificate) error // nil: nothing is ever revoked
	ages    *connAges                                        // WithMaxConnectionAge; nil when off

	// served holds a *servedCert per TLS connection from its acceptance
	// (connContext) to its close, by the connection under it: the one a
	// ClientHelloInfo names.
	served sync.Map

	mu     sync.Mutex
	conns  map[net.Conn]*guarded
	closed bool
}

// servedCert is when the certificate the server presented on a connection
// expires, in Unix nanoseconds (0 until the handshake has chosen it), and
// when the connection was accepted.
type servedCert struct {
	notAfter atomic.Int64
	accepted time.Time
}

type servedCertKey struct{}

// connContext is the http.Server ConnContext hook: it gives a TLS
// connection its servedCert, in the context of every request on it.
func (g *connGuard) connContext(ctx context.Context, c net.Conn) context.Context {
	if g.ages != nil {
		ctx = g.ages.accepted(ctx, c)
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return ctx
	}
	sc := &servedCert{accepted: g.now()}
	g.served.Store(tc.NetConn(), sc)
	return context.WithValue(ctx, servedCertKey{}, sc)
}

// tlsConfig makes cfg record, at each handshake, when the certificate it
// presents expires.
func (g *connGuard) tlsConfig(cfg *tls.Config) *tls.Config {
	get := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := get(hello)
		if err != nil || c == nil || len(c.Certificates) == 0 {
			return c, err
		}
		if v, ok := g.served.Load(hello.Conn); ok {
			if leaf := leafOf(c.Certificates[0]); leaf != nil {
				v.(*servedCert).notAfter.Store(leaf.NotAfter.UnixNano())
			}
		}
		return c, nil
	}
	return cfg
}

// leafOf returns cert's leaf, parsing it if cert does not hold it parsed
// (nil if it does not parse; the handshake then fails anyway).
func leafOf(cert tls.Certificate) *x509.Certificate {
	if cert.Leaf != nil || len(cert.Certificate) == 0 {
		return cert.Leaf
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	return leaf
}

// servedExpiry is when the certificate the server presented on c expires
// (zero if not known).
func (g *connGuard) servedExpiry(c *tls.Conn) time.Time {
	if v, ok := g.served.Load(c.NetConn()); ok {
		if n := v.(*servedCert).notAfter.Load(); n != 0 {
			return time.Unix(0, n)
		}
	}
	return time.Time{}
}

type guarded struct {
	chains [][]*x509.Certificate
	timer  *time.Timer
}

// newConnGuard returns a connGuard whose drain tells time with now (nil:
// time.Now).
func newConnGuard(log *slog.Logger, src mtls.Source, now func() time.Time) *connGuard {
	if now == nil {
		now = time.Now
	}
	g := &connGuard{log: log, now: now, conns: map[net.Conn]*guarded{}}
	if rc, ok := src.(mtls.RevocationChecker); ok {
		g.revoked = rc.CheckRevocation
	}
	return g
}

// connState is the http.Server ConnState hook.
func (g *connGuard) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateActive:
		coalesceHTTP2(c)
		g.track(c)
	case http.StateClosed, http.StateHijacked:
		if tc, ok := c.(*tls.Conn); ok {
			g.served.Delete(tc.NetConn())
		}
		if g.ages != nil {
			g.ages.gone(c)
		}
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
	notAfter, whose := earliestExpiry(cs.VerifiedChains[0]), "the peer's certificate"
	if served := g.servedExpiry(tc); !served.IsZero() && served.Before(notAfter) {
		notAfter, whose = served, "the server's own certificate"
	}
	g.conns[c] = &guarded{chains: cs.VerifiedChains, timer: time.AfterFunc(time.Until(notAfter), func() {
		g.log.Warn("closing connection: "+whose+" has expired",
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
// peer certificate, or the server's own certificate on it, expires within
// ExpiryDrainWindow with "Connection: close", once the connection has been
// open for drainMinAge; with WithMaxConnectionAge, connAges.call does the
// same on a connection past its age.
func (g *connGuard) drain(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc, ok := r.Context().Value(servedCertKey{}).(*servedCert)
		if ok && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			now := g.now()
			soon := now.Add(ExpiryDrainWindow)
			expiring := earliestExpiry(r.TLS.VerifiedChains[0]).Before(soon)
			if !expiring {
				n := sc.notAfter.Load()
				expiring = n != 0 && n < soon.UnixNano()
			}
			if expiring && now.Sub(sc.accepted) >= drainMinAge {
				w.Header().Set("Connection", "close")
			}
		}
		if g.ages != nil {
			g.ages.call(w, r, next)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// stop stops every timer; connections tracked afterwards get none.
func (g *connGuard) stop() {
	if g.ages != nil {
		g.ages.stop()
	}
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
