package pemfile_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/internal/pemfile"
)

func selfSigned(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestCertificatesRoundTrip: certificates come back in order, blocks of
// other types are skipped, and data without a certificate is an error.
func TestCertificatesRoundTrip(t *testing.T) {
	t.Parallel()
	a, key := selfSigned(t, "a")
	b, _ := selfSigned(t, "b")
	keyPEM, err := pemfile.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	data := append(pemfile.EncodeCertificates(a), keyPEM...)
	data = append(data, pemfile.EncodeCertificates(b)...)
	got, err := pemfile.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(a) || !got[1].Equal(b) {
		t.Fatalf("got %d certificates, not a then b", len(got))
	}
	if _, err := pemfile.ParseCertificates(keyPEM); err == nil || !strings.Contains(err.Error(), "no CERTIFICATE block") {
		t.Fatalf("a key alone: %v", err)
	}
	bad := pem.EncodeToMemory(&pem.Block{Type: pemfile.TypeCertificate, Bytes: []byte("not DER")})
	if _, err := pemfile.ParseCertificates(bad); err == nil {
		t.Fatal("a CERTIFICATE block that is not a certificate was accepted")
	}
	blocks := pemfile.Blocks(data, pemfile.TypePrivateKey)
	parsed, err := x509.ParsePKCS8PrivateKey(blocks[0])
	if err != nil || len(blocks) != 1 || !key.Equal(parsed) {
		t.Fatalf("key block: %d blocks, %v", len(blocks), err)
	}
}

// TestCRLs: PEM blocks or one DER CRL; anything else is an error.
func TestCRLs(t *testing.T) {
	t.Parallel()
	ca, key := selfSigned(t, "ca")
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(3), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(7), RevocationTime: time.Now()}},
	}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"pem": pem.EncodeToMemory(&pem.Block{Type: pemfile.TypeCRL, Bytes: der}),
		"der": der,
	} {
		crls, err := pemfile.ParseCRLs(data)
		if err != nil || len(crls) != 1 || crls[0].Number.Int64() != 3 {
			t.Fatalf("%s: %d CRLs, %v", name, len(crls), err)
		}
	}
	if _, err := pemfile.ParseCRLs(pemfile.EncodeCertificates(ca)); err == nil {
		t.Fatal("a certificate was taken for a CRL")
	}
}

// TestWriteFileAtomic: the file is replaced whole with the mode asked for,
// and no temporary file is left beside it; a failed write leaves the old
// file as it was.
func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	if err := pemfile.WriteFileAtomic(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pemfile.WriteFileAtomic(path, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(data, []byte("two")) {
		t.Fatalf("read %q, %v", data, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want 1 (%v)", len(entries), err)
	}
	// A directory where the file should be: the rename fails, nothing else changes.
	blocked := filepath.Join(dir, "blocked")
	if err := os.Mkdir(blocked, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := pemfile.WriteFileAtomic(blocked, []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), "write "+blocked) {
		t.Fatalf("write over a directory: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("a failed write left %d entries, want 2", len(entries))
	}
}
