// Package certs mints the development PKI: a certificate authority and the
// leaf certificates of workloads and clients, each carrying a SPIFFE ID.
//
// It backs `palisade certs init` and the certificates tests generate for
// themselves. Keys are ECDSA P-256. It is a development CA: production
// deployments take their certificates from their own PKI (SPIRE, a corporate
// CA, …) and hand Palisade the PEM files.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// CA is a certificate authority that issues leaf certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed CA for trustDomain, valid from now for validity.
// The CA certificate carries the trust domain's SPIFFE ID (spiffe://<td>) as
// its URI SAN, as SPIFFE trust bundles do.
func NewCA(trustDomain string, validity time.Duration) (*CA, error) {
	id, err := spiffeid.FromParts(trustDomain, "")
	if err != nil {
		return nil, fmt.Errorf("certs: new CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: new CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Palisade development CA"}, CommonName: trustDomain},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if tmpl.URIs, err = idURIs(id); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("certs: self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Usage says what a leaf certificate may be used for (its extended key usage).
type Usage int

const (
	// UsageWorkload is for a service: it serves TLS and calls other services
	// with the same certificate (serverAuth and clientAuth).
	UsageWorkload Usage = iota
	// UsageClient is for a client that only calls (clientAuth).
	UsageClient
	// UsageServer is for a server that never calls (serverAuth only). A client
	// certificate with this usage is refused by Palisade servers.
	UsageServer
)

// Leaf describes a leaf certificate to issue.
type Leaf struct {
	// SPIFFEID is the workload identity, put in the only URI SAN. Empty means
	// no URI SAN at all (a certificate Palisade servers refuse).
	SPIFFEID string
	// DNSNames and IPAddresses are the server names the certificate is valid for.
	DNSNames    []string
	IPAddresses []net.IP
	Usage       Usage
	// NotBefore and NotAfter default to one minute ago and NotBefore+Validity.
	NotBefore time.Time
	NotAfter  time.Time
	// Validity is used when NotAfter is zero; it defaults to 90 days.
	Validity time.Duration
}

// Issued is a leaf certificate with its private key.
type Issued struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Issue signs a new leaf certificate with a fresh P-256 key: an end entity
// (basic constraints CA:FALSE) with the extended key usage of l.Usage.
func (ca *CA) Issue(l Leaf) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: leaf key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notBefore := l.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Minute)
	}
	notAfter := l.NotAfter
	if notAfter.IsZero() {
		validity := l.Validity
		if validity == 0 {
			validity = 90 * 24 * time.Hour
		}
		notAfter = notBefore.Add(validity)
	}
	// An end entity, and says so (basic constraints CA:FALSE, as SPIFFE's
	// X509-SVID requires): Palisade refuses a workload certificate without
	// it, and one without the extended key usage of its role.
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              l.DNSNames,
		IPAddresses:           l.IPAddresses,
	}
	switch l.Usage {
	case UsageWorkload:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case UsageClient:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case UsageServer:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	default:
		return nil, fmt.Errorf("certs: unknown usage %d", l.Usage)
	}
	if l.SPIFFEID != "" {
		id, err := spiffeid.Parse(l.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("certs: leaf: %w", err)
		}
		if tmpl.URIs, err = idURIs(id); err != nil {
			return nil, err
		}
		// The subject carries no identity; SPIFFE puts it in the URI SAN only.
		tmpl.Subject = pkix.Name{Organization: []string{"Palisade"}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: sign leaf: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse leaf: %w", err)
	}
	return &Issued{Cert: cert, Key: key}, nil
}

// CertPEM returns the certificate in PEM form.
func (i *Issued) CertPEM() []byte { return pemfile.EncodeCertificates(i.Cert) }

// KeyPEM returns the private key as a PKCS #8 PEM block.
func (i *Issued) KeyPEM() ([]byte, error) { return pemfile.EncodeKey(i.Key) }

// CertPEM returns the CA certificate in PEM form.
func (ca *CA) CertPEM() []byte { return pemfile.EncodeCertificates(ca.Cert) }

// KeyPEM returns the CA private key as a PKCS #8 PEM block.
func (ca *CA) KeyPEM() ([]byte, error) { return pemfile.EncodeKey(ca.Key) }

// parseCA parses a CA certificate and its PKCS #8 private key from PEM.
func parseCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := pemfile.ParseCertificates(certPEM)
	if err != nil {
		return nil, err
	}
	if !certs[0].IsCA {
		return nil, errors.New("certs: certificate is not a CA")
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("certs: no PKCS #8 PRIVATE KEY block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certs: parse CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("certs: CA key cannot sign")
	}
	return &CA{Cert: certs[0], Key: signer}, nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial: %w", err)
	}
	return serial, nil
}

func idURIs(id spiffeid.ID) ([]*url.URL, error) {
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, fmt.Errorf("certs: SPIFFE ID as URL: %w", err)
	}
	return []*url.URL{u}, nil
}
