// Package mtls builds the TLS configurations of Palisade servers and clients:
// TLS 1.3 only, client certificates required and verified, workload identity
// as a SPIFFE ID in the certificate's URI SAN.
//
// Certificates and trust bundles are read through a Source on every
// handshake (GetConfigForClient on the server, GetClientCertificate and a
// per-dial config on the client), so a Source that rotates its material is
// picked up by new connections without a restart.
//
// # Rotation and revocation
//
// FileSource.Watch polls the PEM files and swaps in new material only after
// validating it in full (parsable, key matching the certificate, within its
// validity period, same SPIFFE ID, chaining to the new CA bundle); a bad file
// is refused and logged and the last good material keeps serving. Open
// connections are not disturbed: TLS material only matters at the handshake.
// A source with a CRL (WithCRL) makes ServerConfig and ClientConfig refuse
// revoked peers in VerifyConnection. The Source of package
// security/mtls/workloadapi takes the SVIDs and bundles a SPIRE agent
// pushes over the SPIFFE Workload API, validated the same way; under SPIRE
// a certificate is revoked by letting it expire.
//
// # Protocol versions
//
// Palisade accepts TLS 1.3 only. Every TLS 1.3 cipher suite is an AEAD with
// forward secrecy, so there is no suite list to get wrong, and every client
// Palisade targets (Go, curl/OpenSSL, grpc-go, browsers) speaks it.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Source supplies a workload's certificate and the bundle of CAs it trusts.
// Implementations must be safe for concurrent use; they may return different
// material over time (rotation).
type Source interface {
	// Certificate returns the workload's current certificate chain and key.
	Certificate() (*tls.Certificate, error)
	// TrustBundle returns the CAs currently trusted to sign peers' certificates.
	TrustBundle() (*x509.CertPool, error)
}

// StaticSource is a Source whose material never changes.
type StaticSource struct {
	cert   *tls.Certificate
	bundle *x509.CertPool
}

// NewStaticSource returns a Source that always returns cert and bundle.
func NewStaticSource(cert tls.Certificate, bundle *x509.CertPool) *StaticSource {
	return &StaticSource{cert: &cert, bundle: bundle}
}

// Certificate implements Source.
func (s *StaticSource) Certificate() (*tls.Certificate, error) { return s.cert, nil }

// TrustBundle implements Source.
func (s *StaticSource) TrustBundle() (*x509.CertPool, error) { return s.bundle, nil }

// IdentityOf returns the SPIFFE ID of src's current certificate: the
// workload's own identity, used for example as its token audience.
func IdentityOf(src Source) (spiffeid.ID, error) {
	cert, err := src.Certificate()
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: own certificate: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if len(cert.Certificate) == 0 {
			return spiffeid.ID{}, errors.New("mtls: own certificate is empty")
		}
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return spiffeid.ID{}, fmt.Errorf("mtls: own certificate: %w", err)
		}
	}
	id, err := spiffeid.FromCertificate(leaf)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: own certificate: %w", err)
	}
	return id, nil
}
