package certstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
)

// SelfSigned returns a self-signed leaf certificate named cn, without URI
// SANs — the kind a foreign tool brings (the Connect conformance runner's
// client and server certificates are such), with the extended key usage of
// usage and basic constraints CA:FALSE; a certificate that serves is valid
// for ips. It is valid from an hour ago for two hours.
func SelfSigned(tb testing.TB, cn string, usage certs.Usage, ips ...net.IP) *certs.Issued {
	tb.Helper()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	switch usage {
	case certs.UsageServer:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = ips
	case certs.UsageWorkload:
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.IPAddresses = ips
	}
	return forge(tb, nil, tmpl)
}

// ForgeSelfSigned signs tmpl as it is with a fresh P-256 key, by that key
// itself; like CA.Forge, for certificates Palisade must refuse.
func ForgeSelfSigned(tb testing.TB, tmpl *x509.Certificate) *certs.Issued {
	tb.Helper()
	return forge(tb, nil, tmpl)
}

// Forge signs tmpl as it is with a fresh P-256 key, by the CA: for the
// certificates the development CA does not issue — a leaf with CA:TRUE,
// without basic constraints or without extended key usage — in tests that
// Palisade refuses them. A missing serial number and validity are filled in
// (random; from an hour ago for two hours).
func (ca *CA) Forge(tmpl *x509.Certificate) *certs.Issued {
	ca.tb.Helper()
	return forge(ca.tb, ca.CA, tmpl)
}

// forge signs tmpl by parent, or self-signs it when parent is nil.
func forge(tb testing.TB, parent *certs.CA, tmpl *x509.Certificate) *certs.Issued {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("certstest: %v", err)
	}
	t := *tmpl
	if t.SerialNumber == nil {
		if t.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64)); err != nil {
			tb.Fatalf("certstest: %v", err)
		}
	}
	if t.NotBefore.IsZero() {
		t.NotBefore = time.Now().Add(-time.Hour)
	}
	if t.NotAfter.IsZero() {
		t.NotAfter = t.NotBefore.Add(2 * time.Hour)
	}
	issuer, signer := &t, any(key)
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, &t, issuer, &key.PublicKey, signer)
	if err != nil {
		tb.Fatalf("certstest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("certstest: %v", err)
	}
	return &certs.Issued{Cert: cert, Key: key}
}
