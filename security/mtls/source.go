// Package mtls builds the TLS configurations of Palisade servers and clients:
// TLS 1.3 only, client certificates required and verified, workload identity
// as a SPIFFE ID in the certificate's URI SAN.
//
// Certificates and trust bundles are read through a Source on every
// handshake (GetConfigForClient on the server, GetClientCertificate and a
// per-dial config on the client), so a Source that rotates its material is
// picked up by new connections without a restart.
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
	"os"
	"sync/atomic"

	"github.com/palisade-rpc/palisade/certs"
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

// FileSource is a Source read from PEM files: a certificate chain, its private
// key, and a CA bundle. Reload re-reads the files; until a reload succeeds the
// last good material keeps serving.
type FileSource struct {
	certFile, keyFile, caFile string
	current                   atomic.Pointer[material]
}

type material struct {
	cert   *tls.Certificate
	bundle *x509.CertPool
}

// NewFileSource reads certFile, keyFile and caFile and returns a Source over
// them. It fails if any file is missing or malformed or the key does not
// match the certificate.
func NewFileSource(certFile, keyFile, caFile string) (*FileSource, error) {
	s := &FileSource{certFile: certFile, keyFile: keyFile, caFile: caFile}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the files. On error the previous material stays in force.
func (s *FileSource) Reload() error {
	m, err := loadMaterial(s.certFile, s.keyFile, s.caFile)
	if err != nil {
		return err
	}
	s.current.Store(m)
	return nil
}

// Certificate implements Source.
func (s *FileSource) Certificate() (*tls.Certificate, error) { return s.current.Load().cert, nil }

// TrustBundle implements Source.
func (s *FileSource) TrustBundle() (*x509.CertPool, error) { return s.current.Load().bundle, nil }

func loadMaterial(certFile, keyFile, caFile string) (*material, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: load key pair %s: %w", certFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: read CA bundle: %w", err)
	}
	bundle, err := PoolFromPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: CA bundle %s: %w", caFile, err)
	}
	return &material{cert: &cert, bundle: bundle}, nil
}

// PoolFromPEM parses every certificate in pemData into a pool. Each must be a
// CA certificate.
func PoolFromPEM(pemData []byte) (*x509.CertPool, error) {
	cas, err := certs.ParseCertificates(pemData)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, errors.New("mtls: bundle holds a certificate that is not a CA")
		}
		pool.AddCert(ca)
	}
	return pool, nil
}

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
