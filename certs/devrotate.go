package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// DevCRLFile is the name of the development CA's certificate revocation
// list in the dev PKI directory, written by RevokeDev.
const DevCRLFile = "crl.pem"

// LoadDevCA reads the development CA (ca.pem and ca-key.pem) from dir.
func LoadDevCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("certs: dev CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("certs: dev CA key: %w", err)
	}
	return parseCA(certPEM, keyPEM)
}

// RotateDev re-issues the leaf name (one of DevIdentities: <name>.pem and
// <name>-key.pem in dir) with the development CA: a new key and serial
// number, the same SPIFFE ID, DNS and IP SANs and usage as the current leaf,
// valid from a minute ago for validity (0 means 90 days). The key is written
// before the certificate, each atomically (pemfile.WriteFileAtomic), so a watcher
// sees either the old pair, the new pair, or for one poll a new key with the
// old certificate, which it refuses as a mismatch.
func RotateDev(dir, name string, validity time.Duration) (*Issued, error) {
	if !slices.ContainsFunc(DevIdentities(), func(id DevIdentity) bool { return id.Name == name }) {
		return nil, fmt.Errorf("certs: rotate: %q is not a leaf of the development PKI", name)
	}
	ca, err := LoadDevCA(dir)
	if err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("certs: rotate %s: %w", name, err)
	}
	old, err := pemfile.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("certs: rotate %s: %w", name, err)
	}
	if err := old[0].CheckSignatureFrom(ca.Cert); err != nil {
		return nil, fmt.Errorf("certs: rotate %s: current certificate is not from the CA in %s: %w", name, dir, err)
	}
	leaf, err := leafLike(old[0])
	if err != nil {
		return nil, fmt.Errorf("certs: rotate %s: %w", name, err)
	}
	leaf.Validity = validity
	issued, err := ca.Issue(leaf)
	if err != nil {
		return nil, fmt.Errorf("certs: rotate %s: %w", name, err)
	}
	keyPEM, err := issued.KeyPEM()
	if err != nil {
		return nil, err
	}
	if err := pemfile.WriteFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("certs: rotate %s: %w", name, err)
	}
	if err := pemfile.WriteFileAtomic(certFile, issued.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("certs: rotate %s: %w", name, err)
	}
	return issued, nil
}

// leafLike returns the Leaf that describes cert: its SPIFFE ID, SANs and usage.
func leafLike(cert *x509.Certificate) (Leaf, error) {
	id, err := spiffeid.FromCertificate(cert)
	if err != nil {
		return Leaf{}, err
	}
	l := Leaf{SPIFFEID: id.String(), DNSNames: cert.DNSNames, IPAddresses: cert.IPAddresses}
	server := slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	client := slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	switch {
	case server && client:
		l.Usage = UsageWorkload
	case client:
		l.Usage = UsageClient
	case server:
		l.Usage = UsageServer
	default:
		return Leaf{}, errors.New("certificate has neither serverAuth nor clientAuth usage")
	}
	return l, nil
}

// RevokeDev adds serials to the development CA's CRL, <dir>/crl.pem
// (DevCRLFile), creating it when missing: the entries already there are
// kept (a serial already revoked is not added twice), the CRL number is one
// more than the previous one, ThisUpdate is now and NextUpdate now plus
// validity (0 means DefaultCRLValidity). An existing CRL that the CA did not
// sign is an error, and nothing is written. The file is replaced atomically.
func RevokeDev(dir string, serials []*big.Int, validity time.Duration) (*x509.RevocationList, error) {
	if len(serials) == 0 {
		return nil, errors.New("certs: revoke: no serial number given")
	}
	ca, err := LoadDevCA(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, DevCRLFile)
	var entries []x509.RevocationListEntry
	number := big.NewInt(1)
	switch data, err := os.ReadFile(path); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("certs: revoke: %w", err)
	default:
		crls, err := pemfile.ParseCRLs(data)
		if err != nil {
			return nil, fmt.Errorf("certs: revoke: %s: %w", path, err)
		}
		if len(crls) != 1 {
			return nil, fmt.Errorf("certs: revoke: %s holds %d CRLs, want one", path, len(crls))
		}
		if err := crls[0].CheckSignatureFrom(ca.Cert); err != nil {
			return nil, fmt.Errorf("certs: revoke: %s is not signed by the CA in %s: %w", path, dir, err)
		}
		entries = crls[0].RevokedCertificateEntries
		if crls[0].Number != nil {
			number.Add(crls[0].Number, big.NewInt(1))
		}
	}
	now := time.Now()
	for _, s := range serials {
		if s == nil || s.Sign() <= 0 {
			return nil, fmt.Errorf("certs: revoke: serial number %v is not positive", s)
		}
		if slices.ContainsFunc(entries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(s) == 0 }) {
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	if validity <= 0 {
		validity = DefaultCRLValidity
	}
	pemData, crl, err := ca.CreateCRL(CRL{Revoked: entries, Number: number, ThisUpdate: now, NextUpdate: now.Add(validity)})
	if err != nil {
		return nil, err
	}
	if err := pemfile.WriteFileAtomic(path, pemData, 0o644); err != nil {
		return nil, fmt.Errorf("certs: revoke: %w", err)
	}
	return crl, nil
}
