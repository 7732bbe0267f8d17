package bench

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/token"
)

// Identities of the harness: the server is the user service, the client a
// workload of its own. Tokens are issued as the user service's Login issues
// them.
const (
	trustDomain = certs.DefaultTrustDomain
	serverID    = "spiffe://" + trustDomain + "/svc/user"
	clientID    = "spiffe://" + trustDomain + "/client/bench"
	orderID     = "spiffe://" + trustDomain + "/svc/order"
)

// fixture is what every configuration shares: the PKI, the token signing
// key, and a user id and a token per user.
type fixture struct {
	ca         *certs.CA
	pool       *x509.CertPool
	serverCert tls.Certificate
	clientCert tls.Certificate
	serverSrc  mtls.Source
	clientSrc  mtls.Source
	// keys signed the tokens; pub is its Ed25519 public key.
	keys *token.KeySet
	pub  ed25519.PublicKey
	// ids[u] is user u's id; auth[u] the Authorization header value
	// carrying its token.
	ids  []string
	auth []string
}

// newFixture mints a CA, the server's and the client's certificates, an
// EdDSA signing key, and a token for each of users users: role customer,
// bound to the client's certificate, valid for ttl.
func newFixture(users int, ttl time.Duration) (*fixture, error) {
	ca, err := certs.NewCA(trustDomain, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	srv, err := ca.Issue(certs.Leaf{SPIFFEID: serverID, DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: certs.UsageWorkload})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cli, err := ca.Issue(certs.Leaf{SPIFFEID: clientID, Usage: certs.UsageClient})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	fx := &fixture{
		ca:         ca,
		pool:       x509.NewCertPool(),
		serverCert: tls.Certificate{Certificate: [][]byte{srv.Cert.Raw}, PrivateKey: srv.Key, Leaf: srv.Cert},
		clientCert: tls.Certificate{Certificate: [][]byte{cli.Cert.Raw}, PrivateKey: cli.Key, Leaf: cli.Cert},
	}
	fx.pool.AddCert(ca.Cert)
	fx.serverSrc = mtls.NewStaticSource(fx.serverCert, fx.pool)
	fx.clientSrc = mtls.NewStaticSource(fx.clientCert, fx.pool)

	if fx.keys, err = token.NewKeySet(token.AlgEdDSA); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	key, err := fx.keys.ActiveKey()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	fx.pub = key.Private.Public().(ed25519.PublicKey)
	issuer, err := token.NewIssuer(fx.keys, token.IssuerOptions{Issuer: serverID, Audience: []string{serverID, orderID}, TTL: ttl})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	bound := sha256.Sum256(cli.Cert.Raw)
	fx.ids = make([]string, users)
	fx.auth = make([]string, users)
	for u := range users {
		fx.ids[u] = fmt.Sprintf("user-%05d", u)
		tok, _, err := issuer.Issue(token.Grant{Subject: fx.ids[u], Roles: []string{"customer"}, CertSHA256: &bound})
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		fx.auth[u] = "Bearer " + tok
	}
	return fx, nil
}

// verifier returns a new Palisade token verifier for the fixture's tokens,
// with its own (empty) verified-token cache.
func (fx *fixture) verifier() (*token.Verifier, error) {
	pubs, err := fx.keys.PublicKeys()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	v, err := token.NewVerifier(token.VerifierOptions{Issuer: serverID, Audience: serverID, Keys: token.NewStaticKeys(pubs)})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return v, nil
}

// serverTLS returns a bare TLS 1.3 server configuration with the server's
// certificate, requiring and verifying a client certificate when clientAuth.
func (fx *fixture) serverTLS(clientAuth bool, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{fx.serverCert}, NextProtos: nextProtos}
	if clientAuth {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = fx.pool
	}
	return cfg
}

// clientTLS returns a bare TLS 1.3 client configuration trusting the CA,
// presenting the client certificate when withCert.
func (fx *fixture) clientTLS(withCert bool, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: fx.pool, ServerName: "127.0.0.1", NextProtos: nextProtos}
	if withCert {
		cfg.Certificates = []tls.Certificate{fx.clientCert}
	}
	return cfg
}
