package rpc

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// pinnedClient is a client certificate without a SPIFFE ID and the workload
// identity the server gives it (WithPinnedClientCertificate).
type pinnedClient struct {
	cert *x509.Certificate
	id   string
}

// WithPinnedClientCertificate gives the client certificate cert, which
// carries no SPIFFE ID, the workload identity id. It is for clients whose
// certificates Palisade does not issue and that cannot carry a SPIFFE ID —
// a test runner such as the Connect conformance suite's, a third-party tool —
// so that their calls still pass authentication and the policy with a
// workload identity.
//
// The certificate is matched by its SHA-256 (of the DER encoding), never by
// its names. Pinning adds no trust: the certificate must still verify against
// the server's trust bundle at the handshake, so the bundle must hold it or
// its CA. NewServer fails if cert is nil or has any URI SAN (a certificate
// that can carry a SPIFFE ID must carry its own), if id is not a SPIFFE ID of
// the server's trust domain, or if the same certificate is pinned twice.
func WithPinnedClientCertificate(cert *x509.Certificate, id string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		c.pinned = append(c.pinned, pinnedClient{cert: cert, id: id})
	})
}

// pinnedIDs validates the pinned certificates and indexes them by SHA-256.
func pinnedIDs(pinned []pinnedClient, trustDomain string) (map[[32]byte]spiffeid.ID, error) {
	if len(pinned) == 0 {
		return nil, nil
	}
	ids := make(map[[32]byte]spiffeid.ID, len(pinned))
	for _, p := range pinned {
		if p.cert == nil {
			return nil, errors.New("rpc: pinned client certificate is nil")
		}
		if len(p.cert.URIs) > 0 {
			return nil, fmt.Errorf("rpc: pinned client certificate %q has URI SANs; only a certificate without a SPIFFE ID can be pinned", p.cert.Subject.CommonName)
		}
		id, err := spiffeid.Parse(p.id)
		if err != nil {
			return nil, fmt.Errorf("rpc: pinned client certificate %q: %w", p.cert.Subject.CommonName, err)
		}
		if !id.MemberOf(trustDomain) {
			return nil, fmt.Errorf("rpc: pinned client certificate %q: %s is not in trust domain %s", p.cert.Subject.CommonName, id, trustDomain)
		}
		sum := sha256.Sum256(p.cert.Raw)
		if _, dup := ids[sum]; dup {
			return nil, fmt.Errorf("rpc: client certificate %q pinned twice", p.cert.Subject.CommonName)
		}
		ids[sum] = id
	}
	return ids, nil
}

// workload returns the identity of the peer whose certificate chains
// crypto/tls verified: a pinned certificate's assigned ID, or else the
// SPIFFE ID the leaf carries.
func (s *Server) workload(verifiedChains [][]*x509.Certificate) (security.Workload, error) {
	if len(verifiedChains) == 0 || len(verifiedChains[0]) == 0 {
		return security.WorkloadFromChains(verifiedChains, s.cfg.trustDomain)
	}
	leaf := verifiedChains[0][0]
	if w, ok := s.workloads.get(leaf); ok {
		return w, nil
	}
	w, err := s.identify(leaf, verifiedChains)
	if err == nil {
		s.workloads.put(leaf, w)
	}
	return w, err
}

func (s *Server) identify(leaf *x509.Certificate, verifiedChains [][]*x509.Certificate) (security.Workload, error) {
	if len(s.pinned) > 0 {
		sum := sha256.Sum256(leaf.Raw)
		if id, ok := s.pinned[sum]; ok {
			return security.Workload{ID: id, CertSHA256: sum, Certificate: leaf}, nil
		}
	}
	return security.WorkloadFromChains(verifiedChains, s.cfg.trustDomain)
}
