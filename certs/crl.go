package certs

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// CRL describes a certificate revocation list to sign with CA.CreateCRL.
type CRL struct {
	// Revoked lists the revoked certificates.
	Revoked []x509.RevocationListEntry
	// Number is the CRL number (RFC 5280 §5.2.3); each new CRL of a CA must
	// carry a larger one. Required.
	Number *big.Int
	// ThisUpdate defaults to now; NextUpdate to ThisUpdate plus 7 days.
	ThisUpdate time.Time
	NextUpdate time.Time
}

// DefaultCRLValidity is how long after its ThisUpdate a CRL made by
// CA.CreateCRL announces its successor (NextUpdate), unless told otherwise.
const DefaultCRLValidity = 7 * 24 * time.Hour

// CreateCRL signs a CRL with the CA's key and returns it in PEM form
// ("X509 CRL" block) along with its parsed value.
func (ca *CA) CreateCRL(c CRL) ([]byte, *x509.RevocationList, error) {
	if c.Number == nil || c.Number.Sign() < 0 {
		return nil, nil, errors.New("certs: CRL needs a non-negative number")
	}
	this := c.ThisUpdate
	if this.IsZero() {
		this = time.Now()
	}
	next := c.NextUpdate
	if next.IsZero() {
		next = this.Add(DefaultCRLValidity)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		RevokedCertificateEntries: c.Revoked,
		Number:                    c.Number,
		ThisUpdate:                this,
		NextUpdate:                next,
	}, ca.Cert, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: sign CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: parse CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), crl, nil
}
