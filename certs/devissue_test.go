package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

func TestIssueDev(t *testing.T) {
	t.Parallel()
	dir, ca := devPKI(t)
	out := filepath.Join(t.TempDir(), "inventory")
	leaf := certs.Leaf{
		SPIFFEID: "spiffe://palisade.local/svc/inventory", Usage: certs.UsageWorkload,
		DNSNames: []string{"inventory.local"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	written, err := certs.IssueDev(dir, out, "inventory", leaf)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(out, "ca.pem"), filepath.Join(out, "inventory-key.pem"), filepath.Join(out, "inventory.pem")}
	if !slices.Equal(written, want) {
		t.Fatalf("wrote %v, want %v", written, want)
	}
	cert := readCert(t, filepath.Join(out, "inventory.pem"))
	if cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("not a leaf: IsCA %v, basic constraints present %v", cert.IsCA, cert.BasicConstraintsValid)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("extended key usage %v, want serverAuth and clientAuth", cert.ExtKeyUsage)
	}
	if id, err := spiffeid.FromCertificate(cert); err != nil || id.String() != leaf.SPIFFEID {
		t.Errorf("SPIFFE ID %v (%v), want %s", id, err, leaf.SPIFFEID)
	}
	if !slices.Equal(cert.DNSNames, leaf.DNSNames) || len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(leaf.IPAddresses[0]) {
		t.Errorf("SANs %v %v, want %v %v", cert.DNSNames, cert.IPAddresses, leaf.DNSNames, leaf.IPAddresses)
	}
	bundle := readCert(t, filepath.Join(out, "ca.pem"))
	if !bundle.Equal(ca.Cert) {
		t.Error("ca.pem is not the dev CA's certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(bundle)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("does not chain to the CA: %v", err)
	}
	keyPath := filepath.Join(out, "inventory-key.pem")
	st, err := os.Stat(keyPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(out, "inventory.pem"), keyPath); err != nil {
		t.Errorf("the key is not the certificate's: %v", err)
	}
}

// TestIssueDevRefuses: an ID outside the CA's trust domain, files that
// exist, a name that is not a plain file name — each refused, and nothing
// written or changed.
func TestIssueDevRefuses(t *testing.T) {
	t.Parallel()
	dir, _ := devPKI(t)
	ok := certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/inventory", Usage: certs.UsageWorkload}

	out := t.TempDir()
	for name, c := range map[string]struct {
		name string
		leaf certs.Leaf
	}{
		"other trust domain": {"inventory", certs.Leaf{SPIFFEID: "spiffe://example.org/svc/inventory", Usage: certs.UsageWorkload}},
		"no SPIFFE ID":       {"inventory", certs.Leaf{Usage: certs.UsageWorkload}},
		"malformed ID":       {"inventory", certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/../x", Usage: certs.UsageWorkload}},
		"path in name":       {"../inventory", ok},
		"the CA's name":      {"ca", ok},
	} {
		if _, err := certs.IssueDev(dir, out, c.name, c.leaf); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("refusals wrote %d files", len(entries))
	}

	// Existing files: refused without overwrite, unchanged; replaced with it.
	if _, err := certs.IssueDev(dir, out, "inventory", ok); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(out, "inventory.pem"))
	if _, err := certs.IssueDev(dir, out, "inventory", ok); !errors.Is(err, certs.ErrExist) {
		t.Fatalf("second issue: %v, want ErrExist", err)
	}
	if after, _ := os.ReadFile(filepath.Join(out, "inventory.pem")); string(after) != string(before) {
		t.Error("a refused issue changed the certificate")
	}
	if _, err := certs.IssueDev(dir, out, "inventory", ok, certs.WithOverwrite()); err != nil {
		t.Fatalf("with overwrite: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(out, "inventory.pem")); string(after) == string(before) {
		t.Error("overwrite left the certificate as it was")
	}

	// A ca.pem that is the CA's is no conflict (issuing into the PKI's own
	// directory); another one is.
	if _, err := certs.IssueDev(dir, dir, "inventory", ok); err != nil {
		t.Errorf("issuing beside the CA: %v", err)
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "ca.pem"), []byte("another bundle\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.IssueDev(dir, other, "inventory", ok); !errors.Is(err, certs.ErrExist) {
		t.Errorf("over another ca.pem: %v, want ErrExist", err)
	}
	if _, err := os.Stat(filepath.Join(other, "inventory.pem")); err == nil {
		t.Error("a refused issue wrote the certificate")
	}
}
