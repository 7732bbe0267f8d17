package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Authorizer decides whether a peer with a verified certificate and SPIFFE ID
// may be connected to. It runs during the handshake, after chain verification.
type Authorizer func(id spiffeid.ID, chain []*x509.Certificate) error

// AuthorizeID accepts only the peer whose SPIFFE ID is exactly id.
func AuthorizeID(id spiffeid.ID) Authorizer {
	return func(got spiffeid.ID, _ []*x509.Certificate) error {
		if got != id {
			return fmt.Errorf("mtls: peer is %s, want %s", got, id)
		}
		return nil
	}
}

// AuthorizeMemberOf accepts any peer of trustDomain.
func AuthorizeMemberOf(trustDomain string) Authorizer {
	return func(got spiffeid.ID, _ []*x509.Certificate) error {
		if !got.MemberOf(trustDomain) {
			return fmt.Errorf("mtls: peer %s is not in trust domain %s", got, trustDomain)
		}
		return nil
	}
}

// RevocationChecker is implemented by a Source that knows revoked
// certificates (a FileSource with WithCRL). ServerConfig and ClientConfig
// call it in VerifyConnection with the peer's verified chains, on full and
// resumed handshakes, and refuse the peer if it fails.
type RevocationChecker interface {
	CheckRevocation(verifiedChains [][]*x509.Certificate) error
}

// RevocationWatcher is implemented by a RevocationChecker whose revocations
// change while it serves (a FileSource with WithCRL, reloaded). A server
// checks its open connections again when they do: a certificate is checked
// at the handshake, and a connection can outlive the certificate's
// revocation by hours.
type RevocationWatcher interface {
	RevocationChecker
	// RevocationsChanged returns a channel that is closed when the
	// revocations next change. Ask again after it is closed.
	RevocationsChanged() <-chan struct{}
}

// verifyNotRevoked returns the VerifyConnection check of src's revocation
// list, or nil when src keeps none.
func verifyNotRevoked(src Source) func(tls.ConnectionState) error {
	rc, ok := src.(RevocationChecker)
	if !ok {
		return nil
	}
	return func(cs tls.ConnectionState) error { return rc.CheckRevocation(cs.VerifiedChains) }
}

// CheckWorkloadCertificate checks that cert is a workload certificate fit
// for usage (x509.ExtKeyUsageClientAuth to call, ExtKeyUsageServerAuth to
// serve): an end entity — the basic constraints extension present, with
// CA:FALSE; a certificate without the extension is refused rather than
// guessed at, as SPIFFE's X509-SVID says a leaf sets CA:FALSE — whose
// extended key usage names usage. Every Source of Palisade checks its own
// certificate with it, and ServerConfig and ClientConfig the peer's. crypto/x509 accepts a certificate without extended key
// usage, or with anyExtendedKeyUsage, for every purpose, and does not look
// at a leaf's CA flag; a CA certificate accepted as a workload could sign
// certificates for other identities that chain through it.
func CheckWorkloadCertificate(cert *x509.Certificate, usage x509.ExtKeyUsage) error {
	if !cert.BasicConstraintsValid {
		return errors.New("certificate has no basic constraints extension (a workload certificate must say CA:FALSE)")
	}
	if cert.IsCA {
		return errors.New("certificate is a CA certificate (CA:TRUE), not a workload's")
	}
	if !slices.Contains(cert.ExtKeyUsage, usage) {
		return fmt.Errorf("certificate lacks the %s extended key usage", usageName(usage))
	}
	return nil
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	}
	return fmt.Sprintf("extended key usage %d", u)
}

// ServerConfig returns the TLS configuration of a Palisade server: TLS 1.3,
// the server's certificate from src, and a client certificate required and
// verified against src's trust bundle and, when src is a
// RevocationChecker, not revoked. Both are read from src on every
// handshake. The client's certificate must be a workload certificate: an
// end entity (basic constraints present, CA:FALSE) whose extended key usage
// names clientAuth; any other fails the handshake, a certificate without
// extended key usage too (crypto/x509 alone would take it). Checking
// the client's SPIFFE ID is left to HTTP middleware, so that a refusal can
// be reported as an RPC error (unauthenticated) rather than a bare
// handshake alert.
//
// nextProtos are the ALPN protocols to offer, for example "h2", "http/1.1".
func ServerConfig(src Source, nextProtos ...string) *tls.Config {
	protos := append([]string(nil), nextProtos...)
	notRevoked := verifyNotRevoked(src)
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("mtls: client sent no certificate")
		}
		if err := CheckWorkloadCertificate(cs.PeerCertificates[0], x509.ExtKeyUsageClientAuth); err != nil {
			return fmt.Errorf("mtls: client %w", err)
		}
		if notRevoked != nil {
			return notRevoked(cs)
		}
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: protos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, err := src.Certificate()
			if err != nil {
				return nil, fmt.Errorf("mtls: server certificate: %w", err)
			}
			bundle, err := src.TrustBundle()
			if err != nil {
				return nil, fmt.Errorf("mtls: trust bundle: %w", err)
			}
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				NextProtos:       protos,
				Certificates:     []tls.Certificate{*cert},
				ClientCAs:        bundle,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				VerifyConnection: verify,
			}, nil
		},
	}
}

// ClientConfig returns a TLS configuration for one connection from a
// Palisade client: TLS 1.3, the client certificate from src (read at the
// handshake), the server's chain verified for serverName against the trust
// bundle src holds at that moment, its leaf a workload certificate (an end
// entity, basic constraints present with CA:FALSE, whose extended key usage
// names serverAuth), not revoked when src is a RevocationChecker, and then
// its SPIFFE ID checked by authorize.
// A nil authorize or an empty serverName is refused: a client must say
// which servers it expects.
//
// The chain is verified in VerifyConnection rather than by crypto/tls with
// RootCAs fixed when the config is made (crypto/tls's own verification is
// switched off and replaced, as go-spiffe's tlsconfig does): a dial that
// straddles a rotation of the trust bundle must check the server against
// the new bundle, or a server that has just moved to a new CA is refused.
func ClientConfig(src Source, serverName string, authorize Authorizer, nextProtos ...string) (*tls.Config, error) {
	if authorize == nil {
		return nil, errors.New("mtls: client config needs a server authorizer")
	}
	if serverName == "" {
		return nil, errors.New("mtls: client config needs the server's name")
	}
	return clientConfig(src, serverName, authorize, nextProtos), nil
}

// clientConfig is ClientConfig's configuration; with an empty serverName
// the server's certificate is not checked for a name (ClientConfigForID:
// its SPIFFE ID is the check).
func clientConfig(src Source, serverName string, authorize Authorizer, nextProtos []string) *tls.Config {
	notRevoked := verifyNotRevoked(src)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		NextProtos: append([]string(nil), nextProtos...),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.Certificate()
		},
		// Not insecure: VerifyConnection verifies the chain (verifyServer).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			chains, err := verifyServer(src, serverName, cs.PeerCertificates)
			if err != nil {
				return err
			}
			cs.VerifiedChains = chains
			if err := CheckWorkloadCertificate(chains[0][0], x509.ExtKeyUsageServerAuth); err != nil {
				return fmt.Errorf("mtls: server %w", err)
			}
			if notRevoked != nil {
				if err := notRevoked(cs); err != nil {
					return err
				}
			}
			chain := chains[0]
			id, err := spiffeid.FromCertificate(chain[0])
			if err != nil {
				return fmt.Errorf("mtls: server identity: %w", err)
			}
			return authorize(id, chain)
		},
	}
}

// verifyServer does what crypto/tls does for a client with RootCAs and
// ServerName set, with the trust bundle src holds now: it verifies the
// server's chain for the serverAuth usage, at the current time, and the
// leaf for serverName (a DNS name or an IP address) unless it is empty.
func verifyServer(src Source, serverName string, peer []*x509.Certificate) ([][]*x509.Certificate, error) {
	if len(peer) == 0 {
		return nil, errors.New("mtls: server sent no certificate")
	}
	bundle, err := src.TrustBundle()
	if err != nil {
		return nil, fmt.Errorf("mtls: trust bundle: %w", err)
	}
	intermediates := x509.NewCertPool()
	for _, c := range peer[1:] {
		intermediates.AddCert(c)
	}
	chains, err := peer[0].Verify(x509.VerifyOptions{
		Roots:         bundle,
		Intermediates: intermediates,
		DNSName:       serverName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("mtls: server certificate: %w", err)
	}
	return chains, nil
}
