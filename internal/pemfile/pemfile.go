// Package pemfile reads and writes the PEM files of a PKI — certificates,
// CRLs, PKCS #8 private keys — and writes files atomically, so that a
// watcher never reads half of one. It is a leaf: certs (the development
// CA), security/mtls (certificate sources) and security/token (signing key
// files) share it without depending on each other.
package pemfile

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PEM block types.
const (
	TypeCertificate = "CERTIFICATE"
	TypeCRL         = "X509 CRL"
	TypePrivateKey  = "PRIVATE KEY"
)

// EncodeCertificates PEM-encodes certs in order.
func EncodeCertificates(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: TypeCertificate, Bytes: c.Raw})
	}
	return buf.Bytes()
}

// EncodeKey PEM-encodes a private key in PKCS #8 form.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pem: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: TypePrivateKey, Bytes: der}), nil
}

// ParseCertificates parses every CERTIFICATE block in data, in order; there
// must be at least one. Blocks of other types are skipped.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, der := range Blocks(data, TypeCertificate) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("pem: parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("pem: no CERTIFICATE block")
	}
	return out, nil
}

// ParseCRLs parses every "X509 CRL" PEM block in data, or data itself as one
// DER-encoded CRL when it holds no PEM. Signatures are not checked here: the
// caller checks each CRL against its issuer.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	for _, der := range Blocks(data, TypeCRL) {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("pem: parse CRL: %w", err)
		}
		out = append(out, crl)
	}
	if len(out) > 0 {
		return out, nil
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, fmt.Errorf("pem: no X509 CRL block, and not a DER CRL: %w", err)
	}
	return []*x509.RevocationList{crl}, nil
}

// Blocks returns the contents of the PEM blocks of type typ in data, in
// order, skipping blocks of other types.
func Blocks(data []byte, typ string) [][]byte {
	var out [][]byte
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out
		}
		if block.Type == typ {
			out = append(out, block.Bytes)
		}
	}
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so a reader (a certificate watcher, say) never sees
// a half-written file. The file gets mode perm. On error path is unchanged.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
