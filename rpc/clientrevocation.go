package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"sync"

	"github.com/palisade-rpc/palisade/security/mtls"
)

// revokedServers is the client's side of connGuard's revocation check: it
// closes the client's connections to a server whose certificate the
// client's source comes to revoke. The handshake checks the server against
// the CRL, but an HTTP/2 connection is reused for hours; without this, a
// client whose CRL is updated (because a server's key was compromised, say)
// would keep sending calls, and the users' tokens with them, over the
// connection it already had. Calls in flight on such a connection fail
// with unavailable, as on the server side.
//
// It dials the connections itself, so that it learns when the transport
// closes one (closeHook): http.Transport needs the *tls.Conn itself to
// negotiate HTTP/2, so the TLS connection cannot be wrapped, but the TCP
// connection under it can. A goroutine watches the revocations only while
// connections are open, so a client that is dropped leaves nothing running
// once its idle connections are closed.
type revokedServers struct {
	watcher mtls.RevocationWatcher
	log     *slog.Logger

	mu    sync.Mutex
	conns map[*tls.Conn][][]*x509.Certificate
	// stop is closed to end the watching goroutine when the last connection
	// closes; nil when none runs.
	stop chan struct{}
}

func newRevokedServers(w mtls.RevocationWatcher, log *slog.Logger) *revokedServers {
	return &revokedServers{watcher: w, log: log, conns: map[*tls.Conn][][]*x509.Certificate{}}
}

// dial connects to addr with d, makes the TLS handshake with config and
// tracks the connection until it is closed. As with tls.Dialer, d's
// Timeout bounds the connection and the handshake together.
func (g *revokedServers) dial(ctx context.Context, d *net.Dialer, network, addr string, config *tls.Config) (net.Conn, error) {
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	hook := &closeHook{Conn: raw}
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

// track checks tc's server against the revocations again, under the lock
// (a CRL that took effect after the handshake's check would otherwise be
// missed: the watcher sweeps only the connections already tracked), and
// tracks it.
//
// What is checked is the chain the server presented, leaf first: the
// client's chains are verified in mtls.ClientConfig's VerifyConnection, so
// the connection state holds none, and the presented certificates include
// the leaf and intermediates a CRL can revoke.
func (g *revokedServers) track(tc *tls.Conn) error {
	chains := [][]*x509.Certificate{tc.ConnectionState().PeerCertificates}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stop == nil {
		// The channel is taken before the check below: a change after the
		// check closes it, and the watcher then sweeps tc too.
		g.stop = make(chan struct{})
		changed := g.watcher.RevocationsChanged()
		go watchRevocations(g.watcher, changed, g.stop, g.sweep)
	}
	if err := g.watcher.CheckRevocation(chains); err != nil {
		if len(g.conns) == 0 {
			close(g.stop)
			g.stop = nil
		}
		return err
	}
	g.conns[tc] = chains
	return nil
}

func (g *revokedServers) untrack(tc *tls.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.conns[tc]; !ok {
		return
	}
	delete(g.conns, tc)
	if len(g.conns) == 0 && g.stop != nil {
		close(g.stop)
		g.stop = nil
	}
}

// sweep closes every connection to a server the revocations now list.
func (g *revokedServers) sweep() {
	revoked := map[*tls.Conn]error{}
	g.mu.Lock()
	for tc, chains := range g.conns {
		if err := g.watcher.CheckRevocation(chains); err != nil {
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
