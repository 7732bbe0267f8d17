package bench

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
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

// fixture is what the clients of every configuration share: the PKI, a
// user id and a token per user, and the server half (what the servers need,
// sent to the server process).
type fixture struct {
	server *serverFixture
	pool   *x509.CertPool
	// clientCert is the certificate the tokens are bound to; otherCert
	// another certificate of the same workload (same SPIFFE ID, another
	// key), which a token bound to clientCert must not pass with.
	clientCert tls.Certificate
	otherCert  tls.Certificate
	clientSrc  mtls.Source
	// ids[u] is user u's id; auth[u] the Authorization header value
	// carrying its token.
	ids  []string
	auth []string
}

// serverFixture is what the servers need: the CA bundle, the server's
// certificate and the token verification keys.
type serverFixture struct {
	ca   *x509.Certificate
	pool *x509.CertPool
	cert tls.Certificate
	src  mtls.Source
	keys []*token.PublicKey
	// pub is the Ed25519 key the tokens are signed with, for golang-jwt.
	pub ed25519.PublicKey
}

// newFixture mints a CA, the server's and two client certificates, an
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
	other, err := ca.Issue(certs.Leaf{SPIFFEID: clientID, Usage: certs.UsageClient})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	keys, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	pubs, err := keys.PublicKeys()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	sf, err := newServerFixture(ca.Cert, tls.Certificate{Certificate: [][]byte{srv.Cert.Raw}, PrivateKey: srv.Key, Leaf: srv.Cert}, pubs)
	if err != nil {
		return nil, err
	}
	fx := &fixture{
		server:     sf,
		pool:       sf.pool,
		clientCert: tls.Certificate{Certificate: [][]byte{cli.Cert.Raw}, PrivateKey: cli.Key, Leaf: cli.Cert},
		otherCert:  tls.Certificate{Certificate: [][]byte{other.Cert.Raw}, PrivateKey: other.Key, Leaf: other.Cert},
	}
	fx.clientSrc = mtls.NewStaticSource(fx.clientCert, sf.pool)

	issuer, err := token.NewIssuer(keys, serverID, token.WithAudience(serverID, orderID), token.WithTTL(ttl))
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

// newServerFixture checks that the keys are the one Ed25519 key the
// harness signs with, and returns the server half of a fixture.
func newServerFixture(ca *x509.Certificate, cert tls.Certificate, keys []*token.PublicKey) (*serverFixture, error) {
	if len(keys) != 1 {
		return nil, fmt.Errorf("bench: %d token keys, want 1", len(keys))
	}
	pub, ok := keys[0].Key.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("bench: the token key is not an Ed25519 key")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &serverFixture{ca: ca, pool: pool, cert: cert, src: mtls.NewStaticSource(cert, pool), keys: keys, pub: pub}, nil
}

// fixtureMessage is the server half of a fixture as the server process
// receives it: DER certificates, the PKCS #8 server key, the raw Ed25519
// token key. It holds a private key: it goes only down the pipe to the
// child process, never to a file or a log.
type fixtureMessage struct {
	CA       []byte `json:"ca"`
	Cert     []byte `json:"cert"`
	Key      []byte `json:"key"`
	TokenKID string `json:"token_kid"`
	TokenKey []byte `json:"token_key"`
}

func (sf *serverFixture) message() (fixtureMessage, error) {
	key, err := x509.MarshalPKCS8PrivateKey(sf.cert.PrivateKey)
	if err != nil {
		return fixtureMessage{}, fmt.Errorf("bench: server key: %w", err)
	}
	return fixtureMessage{CA: sf.ca.Raw, Cert: sf.cert.Certificate[0], Key: key, TokenKID: sf.keys[0].ID, TokenKey: sf.pub}, nil
}

func (m fixtureMessage) serverFixture() (*serverFixture, error) {
	ca, err := x509.ParseCertificate(m.CA)
	if err != nil {
		return nil, fmt.Errorf("bench: CA certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(m.Cert)
	if err != nil {
		return nil, fmt.Errorf("bench: server certificate: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(m.Key)
	if err != nil {
		return nil, fmt.Errorf("bench: server key: %w", err)
	}
	pk, err := token.NewPublicKey(m.TokenKID, token.AlgEdDSA, ed25519.PublicKey(m.TokenKey))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return newServerFixture(ca, tls.Certificate{Certificate: [][]byte{m.Cert}, PrivateKey: key, Leaf: leaf}, []*token.PublicKey{pk})
}

// verifier returns a new Palisade token verifier for the fixture's tokens,
// with its own (empty) verified-token cache.
func (sf *serverFixture) verifier() (*token.Verifier, error) {
	v, err := token.NewVerifier(serverID, serverID, token.NewStaticKeys(sf.keys))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return v, nil
}

// serverTLS returns a bare TLS 1.3 server configuration with the server's
// certificate, requiring and verifying a client certificate when clientAuth.
func (sf *serverFixture) serverTLS(clientAuth bool, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{sf.cert}, NextProtos: nextProtos}
	if clientAuth {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = sf.pool
	}
	return cfg
}

// clientTLS returns a bare TLS 1.3 client configuration trusting the CA,
// presenting cert unless it is nil.
func (fx *fixture) clientTLS(cert *tls.Certificate, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: fx.pool, ServerName: "127.0.0.1", NextProtos: nextProtos}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}
