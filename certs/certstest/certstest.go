// Package certstest builds certificate authorities and leaf certificates for
// tests, in memory, and turns them into mtls.Sources.
package certstest

import (
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// TrustDomain is the trust domain of CAs made by NewCA.
const TrustDomain = certs.DefaultTrustDomain

// CA is a test certificate authority.
type CA struct {
	*certs.CA
	tb testing.TB
}

// NewCA returns a fresh CA for TrustDomain, failing the test on error.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	ca, err := certs.NewCA(TrustDomain, 24*time.Hour)
	if err != nil {
		tb.Fatalf("certstest: %v", err)
	}
	return &CA{CA: ca, tb: tb}
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue issues a leaf, failing the test on error.
func (ca *CA) Issue(l certs.Leaf) *certs.Issued {
	ca.tb.Helper()
	issued, err := ca.CA.Issue(l)
	if err != nil {
		ca.tb.Fatalf("certstest: %v", err)
	}
	return issued
}

// Server issues a workload certificate for spiffe://palisade.local<path>,
// valid for localhost and 127.0.0.1.
func (ca *CA) Server(path string) *certs.Issued {
	ca.tb.Helper()
	return ca.Issue(certs.Leaf{
		SPIFFEID:    "spiffe://" + TrustDomain + path,
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		Usage:       certs.UsageWorkload,
	})
}

// Client issues a client certificate for spiffe://palisade.local<path>.
func (ca *CA) Client(path string) *certs.Issued {
	ca.tb.Helper()
	return ca.Issue(certs.Leaf{SPIFFEID: "spiffe://" + TrustDomain + path, Usage: certs.UsageClient})
}

// Source returns a static mtls.Source for issued, trusting this CA.
func (ca *CA) Source(issued *certs.Issued) *mtls.StaticSource {
	return mtls.NewStaticSource(TLSCertificate(issued), ca.Pool())
}

// TLSCertificate converts issued to a tls.Certificate.
func TLSCertificate(issued *certs.Issued) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{issued.Cert.Raw}, PrivateKey: issued.Key, Leaf: issued.Cert}
}

// Files are the PEM files of a leaf and its CA, written by WriteFiles.
type Files struct {
	Cert, Key, CA string
}

// WriteFiles writes issued and the CA as PEM files into dir under name and
// returns their paths. Each file is replaced atomically
// (pemfile.WriteFileAtomic), so a watcher never reads half a file.
func (ca *CA) WriteFiles(dir, name string, issued *certs.Issued) Files {
	ca.tb.Helper()
	key, err := issued.KeyPEM()
	if err != nil {
		ca.tb.Fatal(err)
	}
	f := Files{
		Cert: filepath.Join(dir, name+".pem"),
		Key:  filepath.Join(dir, name+"-key.pem"),
		CA:   filepath.Join(dir, "ca.pem"),
	}
	for path, data := range map[string][]byte{f.Cert: issued.CertPEM(), f.Key: key, f.CA: ca.CertPEM()} {
		if err := pemfile.WriteFileAtomic(path, data, 0o600); err != nil {
			ca.tb.Fatal(err)
		}
	}
	return f
}

// WritePair replaces the certificate and key files of f with issued's, key
// first, each atomically: what a certificate rotation does.
func (ca *CA) WritePair(f Files, issued *certs.Issued) {
	ca.tb.Helper()
	key, err := issued.KeyPEM()
	if err != nil {
		ca.tb.Fatal(err)
	}
	if err := pemfile.WriteFileAtomic(f.Key, key, 0o600); err != nil {
		ca.tb.Fatal(err)
	}
	if err := pemfile.WriteFileAtomic(f.Cert, issued.CertPEM(), 0o600); err != nil {
		ca.tb.Fatal(err)
	}
}

// WriteBundle writes the certificates of cas to path as one CA bundle.
func WriteBundle(tb testing.TB, path string, cas ...*CA) {
	tb.Helper()
	var pemData []byte
	for _, ca := range cas {
		pemData = append(pemData, ca.CertPEM()...)
	}
	if err := pemfile.WriteFileAtomic(path, pemData, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// WriteCRL writes to path a CRL signed by the CA, numbered number, that
// revokes the given certificates.
func (ca *CA) WriteCRL(path string, number int64, revoked ...*x509.Certificate) {
	ca.tb.Helper()
	var entries []x509.RevocationListEntry
	for _, c := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now()})
	}
	data, _, err := ca.CreateCRL(certs.CRL{Revoked: entries, Number: big.NewInt(number)})
	if err != nil {
		ca.tb.Fatal(err)
	}
	if err := pemfile.WriteFileAtomic(path, data, 0o600); err != nil {
		ca.tb.Fatal(err)
	}
}
