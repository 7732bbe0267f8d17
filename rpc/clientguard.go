package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/security/mtls"
)

// serverGuard is the client's side of connGuard: it closes the client's
// connection to a server when the server's certificate expires, or when
// the client's source comes to revoke it. The handshake checks the server's
// certificate, but an HTTP/2 connection is reused for hours; without this,
// a client would keep sending calls, and its users' tokens with them, to a
// server whose certificate has expired or was revoked (because its key was
// compromised, say) over the connection it already had. Calls in flight on
// such a connection fail with unavailable, as on the server side; a
// Palisade server asks its clients to leave a connection before its own
// certificate expires (connGuard.drain), so at expiry there are none.
//
// It dials the connections itself, so that it learns when the transport
// closes one (closeHook): http.Transport needs the *tls.Conn itself to
// negotiate HTTP/2, so the TLS connection cannot be wrapped, but the TCP
// connection under it can. A goroutine watches the revocations only while
// connections are open, so a client that is dropped leaves nothing running
// once its idle connections are closed.
type serverGuard struct {
	watcher mtls.RevocationWatcher // nil: the revocations never change
	log     *slog.Logger

	mu    sync.Mutex
	conns map[*tls.Conn]*guarded
	// stop is closed to end the watching goroutine when the last connection
	// closes; nil when none runs.
	stop chan struct{}
}

func newServerGuard(src mtls.Source, log *slog.Logger) *serverGuard {
	g := &serverGuard{log: log, conns: map[*tls.Conn]*guarded{}}
	if w, ok := src.(mtls.RevocationWatcher); ok {
		g.watcher = w
	}
	return g
}

// dial connects to addr with d, makes the TLS handshake with config and
// guards the connection until it is closed. As with tls.Dialer, d's
// Timeout bounds the connection and the handshake together.
func (g *serverGuard) dial(ctx context.Context, d *net.Dialer, network, addr string, config *tls.Config) (net.Conn, error) {
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	// Under TLS, so that the records of requests sent together share a
	// write (coalesce.go).
	hook := &closeHook{Conn: newCoalescingConn(raw, true)}
	tc := tls.Client(hook, config)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	hook.onClose = func() { g.untrack(tc) }
	if err := g.track(tc); err != nil {
		_ = tc.Close()
		return nil, err
	}
	return tc, nil
}

// track arms tc's expiry timer and, with a watcher, checks tc's server
// against the revocations again, under the lock (a CRL that took effect
// after the handshake's check would otherwise be missed: the watcher sweeps
// only the connections already tracked).
//
// What is checked is the chain the server presented, leaf first: the
// client's chains are verified in mtls.ClientConfig's VerifyConnection, so
// the connection state holds none, and the presented certificates include
// the leaf and intermediates a CRL can revoke.
func (g *serverGuard) track(tc *tls.Conn) error {
	peer := tc.ConnectionState().PeerCertificates
	if len(peer) == 0 { // mtls.ClientConfig refuses such a server; never trust one
		return errors.New("rpc: the server presented no certificate")
	}
	chains := [][]*x509.Certificate{peer}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.watcher != nil {
		if g.stop == nil {
			// The channel is taken before the check below: a change after
			// the check closes it, and the watcher then sweeps tc too.
			g.stop = make(chan struct{})
			go watchRevocations(g.watcher, g.watcher.RevocationsChanged(), g.stop, g.sweep)
		}
		if err := g.watcher.CheckRevocation(chains); err != nil {
			g.stopIfIdle()
			return err
		}
	}
	notAfter := earliestExpiry(peer)
	g.conns[tc] = &guarded{chains: chains, timer: time.AfterFunc(time.Until(notAfter), func() {
		g.log.Warn("closing connection: the server's certificate has expired",
			"remote", tc.RemoteAddr().String(), "not_after", notAfter.UTC().Format(time.RFC3339))
		_ = tc.Close()
	})}
	return nil
}

func (g *serverGuard) untrack(tc *tls.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gc, ok := g.conns[tc]; ok {
		gc.timer.Stop()
		delete(g.conns, tc)
		g.stopIfIdle()
	}
}

// stopIfIdle ends the watching goroutine if no connection is left. g.mu is
// held.
func (g *serverGuard) stopIfIdle() {
	if len(g.conns) == 0 && g.stop != nil {
		close(g.stop)
		g.stop = nil
	}
}

// sweep closes every connection to a server the revocations now list.
func (g *serverGuard) sweep() {
	revoked := map[*tls.Conn]error{}
	g.mu.Lock()
	for tc, gc := range g.conns {
		if err := g.watcher.CheckRevocation(gc.chains); err != nil {
			revoked[tc] = err
		}
	}
	g.mu.Unlock()
	// Not under the lock: Close sends close_notify, and untracks tc.
	for tc, err := range revoked {
		g.log.Warn("closing connection: the server's certificate is revoked",
			"remote", tc.RemoteAddr().String(), "reason", err.Error())
		_ = tc.Close()
	}
}

// watchRevocations calls sweep each time w's revocations change, until
// stop is closed. changed is w's channel taken before the connections to
// sweep were last checked; the next one is taken before each sweep, so a
// change during a sweep is swept again.
func watchRevocations(w mtls.RevocationWatcher, changed <-chan struct{}, stop <-chan struct{}, sweep func()) {
	for {
		select {
		case <-changed:
		case <-stop:
			return
		}
		changed = w.RevocationsChanged()
		sweep()
	}
}

// closeHook is a connection that calls onClose (once) when it is closed.
type closeHook struct {
	net.Conn
	once    sync.Once
	onClose func() // set before the connection is handed out
}

func (c *closeHook) Close() error {
	err := c.Conn.Close()
	if c.onClose != nil {
		c.once.Do(c.onClose)
	}
	return err
}
