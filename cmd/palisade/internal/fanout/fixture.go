package fanout

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	"github.com/palisade-rpc/palisade/certs"
)

// Identities of the run. The Palisade server is the user service; every
// subscriber is a replica of the order service, the workload the default
// policy lets watch user changes (data.palisade.config.watchers), each
// group of subscribers with a certificate (and key) of its own, as separate
// replicas have; a workload that is not a watcher, and a client without a
// certificate, are what the preflight sends to be refused. Redis is served
// with a certificate of its own; its publisher and subscribers present the
// same workload certificates as on Palisade's side.
const (
	trustDomain = certs.DefaultTrustDomain
	serverID    = "spiffe://" + trustDomain + "/svc/user"
	watcherID   = "spiffe://" + trustDomain + "/svc/order"
	strangerID  = "spiffe://" + trustDomain + "/svc/billing"
	redisID     = "spiffe://" + trustDomain + "/svc/redis"
)

// fixture is the PKI of a run.
type fixture struct {
	ca   *certs.CA
	pool *x509.CertPool
	// server is the user service's certificate, redis Redis's.
	server, redis tls.Certificate
	// watchers[g] is the certificate of subscriber group g; the publisher
	// presents the user service's certificate to Redis.
	watchers []tls.Certificate
	// stranger is a workload of the trust domain that is not a watcher.
	stranger tls.Certificate
}

// newFixture mints a CA valid for a day and the certificates of groups
// subscriber groups.
func newFixture(groups int) (*fixture, error) {
	ca, err := certs.NewCA(trustDomain, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("fanout: %w", err)
	}
	fx := &fixture{ca: ca, pool: x509.NewCertPool()}
	fx.pool.AddCert(ca.Cert)
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	issue := func(l certs.Leaf) (tls.Certificate, error) {
		l.Validity = 24 * time.Hour
		is, err := ca.Issue(l)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("fanout: %w", err)
		}
		return tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: is.Key, Leaf: is.Cert}, nil
	}
	if fx.server, err = issue(certs.Leaf{SPIFFEID: serverID, DNSNames: []string{"localhost"}, IPAddresses: loopback, Usage: certs.UsageWorkload}); err != nil {
		return nil, err
	}
	if fx.redis, err = issue(certs.Leaf{SPIFFEID: redisID, DNSNames: []string{"localhost"}, IPAddresses: loopback, Usage: certs.UsageServer}); err != nil {
		return nil, err
	}
	if fx.stranger, err = issue(certs.Leaf{SPIFFEID: strangerID, Usage: certs.UsageWorkload}); err != nil {
		return nil, err
	}
	fx.watchers = make([]tls.Certificate, groups)
	for g := range fx.watchers {
		if fx.watchers[g], err = issue(certs.Leaf{SPIFFEID: watcherID, Usage: certs.UsageWorkload}); err != nil {
			return nil, err
		}
	}
	return fx, nil
}

// serverMessage is what the server process needs of the fixture: the CA
// and the user service's certificate and PKCS #8 key (DER). It holds a
// private key: it goes only down the pipe to the child process, never to a
// file or a log.
type serverMessage struct {
	CA   []byte `json:"ca"`
	Cert []byte `json:"cert"`
	Key  []byte `json:"key"`
}

func (fx *fixture) serverMessage() (serverMessage, error) {
	key, err := x509.MarshalPKCS8PrivateKey(fx.server.PrivateKey)
	if err != nil {
		return serverMessage{}, fmt.Errorf("fanout: server key: %w", err)
	}
	return serverMessage{CA: fx.ca.Cert.Raw, Cert: fx.server.Certificate[0], Key: key}, nil
}

// credentials parses a serverMessage: the server's certificate and the
// pool of the CA.
func (m serverMessage) credentials() (tls.Certificate, *x509.CertPool, error) {
	ca, err := x509.ParseCertificate(m.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("fanout: CA certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(m.Cert)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("fanout: server certificate: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(m.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("fanout: server key: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{m.Cert}, PrivateKey: key, Leaf: leaf}, pool, nil
}
