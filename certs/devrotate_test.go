package certs_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/internal/pemfile"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pemfile.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	return c[0]
}

// devPKI makes a development PKI in a temporary directory.
func devPKI(t *testing.T) (string, *certs.CA) {
	t.Helper()
	dir := t.TempDir()
	if _, err := certs.InitDev(dir); err != nil {
		t.Fatal(err)
	}
	ca, err := certs.LoadDevCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, ca
}

func TestRotateDev(t *testing.T) {
	t.Parallel()
	dir, ca := devPKI(t)
	for _, id := range certs.DevIdentities() {
		old := readCert(t, filepath.Join(dir, id.Name+".pem"))
		issued, err := certs.RotateDev(dir, id.Name, time.Hour)
		if err != nil {
			t.Fatalf("rotate %s: %v", id.Name, err)
		}
		now := readCert(t, filepath.Join(dir, id.Name+".pem"))
		if !now.Equal(issued.Cert) || now.SerialNumber.Cmp(old.SerialNumber) == 0 || now.PublicKey.(*ecdsa.PublicKey).Equal(old.PublicKey) {
			t.Fatalf("%s: not a new certificate with a new key", id.Name)
		}
		if err := now.CheckSignatureFrom(ca.Cert); err != nil {
			t.Fatalf("%s: %v", id.Name, err)
		}
		if now.URIs[0].String() != old.URIs[0].String() || !slices.Equal(now.DNSNames, old.DNSNames) ||
			len(now.IPAddresses) != len(old.IPAddresses) || !slices.Equal(now.ExtKeyUsage, old.ExtKeyUsage) {
			t.Fatalf("%s: identity, SANs or usage changed: %v %v %v %v", id.Name, now.URIs, now.DNSNames, now.IPAddresses, now.ExtKeyUsage)
		}
		if d := now.NotAfter.Sub(now.NotBefore); d != time.Hour {
			t.Fatalf("%s: validity %s, want 1h", id.Name, d)
		}
		key, err := os.ReadFile(filepath.Join(dir, id.Name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := issued.KeyPEM(); string(key) != string(want) {
			t.Fatalf("%s: key file does not hold the new key", id.Name)
		}
		if fi, _ := os.Stat(filepath.Join(dir, id.Name+"-key.pem")); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: key mode %v", id.Name, fi.Mode().Perm())
		}
	}
	for _, bad := range []string{"ca", "../usersvc", "nobody", ""} {
		if _, err := certs.RotateDev(dir, bad, 0); err == nil {
			t.Errorf("RotateDev(%q) succeeded", bad)
		}
	}
}

func TestRevokeDev(t *testing.T) {
	t.Parallel()
	dir, ca := devPKI(t)
	cli, other := readCert(t, filepath.Join(dir, "cli.pem")), readCert(t, filepath.Join(dir, "other.pem"))
	crl, err := certs.RevokeDev(dir, []*big.Int{cli.SerialNumber}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 1 || len(crl.RevokedCertificateEntries) != 1 || crl.NextUpdate.Sub(crl.ThisUpdate) != time.Hour {
		t.Fatalf("first CRL: number %v, %d entries, next update after %s", crl.Number, len(crl.RevokedCertificateEntries), crl.NextUpdate.Sub(crl.ThisUpdate))
	}
	crl, err = certs.RevokeDev(dir, []*big.Int{other.SerialNumber, cli.SerialNumber}, 0)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, certs.DevCRLFile))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := pemfile.ParseCRLs(data)
	if err != nil || len(parsed) != 1 {
		t.Fatalf("crl.pem: %v (%d CRLs)", err, len(parsed))
	}
	if err := parsed[0].CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, e := range parsed[0].RevokedCertificateEntries {
		serials = append(serials, e.SerialNumber.String())
	}
	if parsed[0].Number.Int64() != 2 || !slices.Equal(serials, []string{cli.SerialNumber.String(), other.SerialNumber.String()}) {
		t.Fatalf("second CRL: number %v, serials %v", parsed[0].Number, serials)
	}
	if parsed[0].NextUpdate.Sub(parsed[0].ThisUpdate) != certs.DefaultCRLValidity || crl.Number.Int64() != 2 {
		t.Fatalf("second CRL: next update after %s", parsed[0].NextUpdate.Sub(parsed[0].ThisUpdate))
	}

	// A CRL some other CA signed is not extended, and stays as it was.
	otherCA, err := certs.NewCA(certs.DefaultTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _, err := otherCA.CreateCRL(certs.CRL{Number: big.NewInt(7)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, certs.DevCRLFile), foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.RevokeDev(dir, []*big.Int{big.NewInt(5)}, 0); err == nil || !strings.Contains(err.Error(), "not signed by the CA") {
		t.Fatalf("RevokeDev over a foreign CRL: %v", err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, certs.DevCRLFile)); string(now) != string(foreign) {
		t.Fatal("the foreign CRL was overwritten")
	}
	if _, err := certs.RevokeDev(dir, []*big.Int{big.NewInt(0)}, 0); err == nil {
		t.Fatal("serial 0 accepted")
	}
}
