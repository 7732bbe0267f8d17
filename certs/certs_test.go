package certs_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/pemfile"
)

// TestLeavesAreWorkloadCertificates: every leaf the development CA issues —
// by Issue, in `palisade certs init` and in a rotation — and the test
// helpers' certificates are end entities (basic constraints present,
// CA:FALSE) with exactly the extended key usages of their role, which
// Palisade's handshakes require; the CA is a CA.
func TestLeavesAreWorkloadCertificates(t *testing.T) {
	t.Parallel()
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	want := map[certs.Usage][]x509.ExtKeyUsage{
		certs.UsageWorkload: {server, client},
		certs.UsageClient:   {client},
		certs.UsageServer:   {server},
	}
	check := func(t *testing.T, what string, c *x509.Certificate, usage certs.Usage) {
		t.Helper()
		if !c.BasicConstraintsValid || c.IsCA {
			t.Errorf("%s: basic constraints present %v, CA %v; want present, CA:FALSE", what, c.BasicConstraintsValid, c.IsCA)
		}
		got := slices.Clone(c.ExtKeyUsage)
		slices.Sort(got)
		w := slices.Clone(want[usage])
		slices.Sort(w)
		if !slices.Equal(got, w) {
			t.Errorf("%s: extended key usage %v, want %v", what, c.ExtKeyUsage, want[usage])
		}
	}

	ca, err := certs.NewCA(certs.DefaultTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.BasicConstraintsValid || !ca.Cert.IsCA {
		t.Fatal("the CA certificate is not a CA")
	}
	for usage := range want {
		issued, err := ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/x", Usage: usage})
		if err != nil {
			t.Fatal(err)
		}
		check(t, "Issue", issued.Cert, usage)
		check(t, "certstest.SelfSigned", certstest.SelfSigned(t, "tool", usage).Cert, usage)
	}
	tca := certstest.NewCA(t)
	check(t, "certstest.CA.Server", tca.Server("/svc/user").Cert, certs.UsageWorkload)
	check(t, "certstest.CA.Client", tca.Client("/client/cli").Cert, certs.UsageClient)

	dir := t.TempDir()
	if _, err := certs.InitDev(dir); err != nil {
		t.Fatal(err)
	}
	for _, id := range certs.DevIdentities() {
		file := filepath.Join(dir, id.Name+".pem")
		for _, step := range []string{"init", "rotate"} {
			if step == "rotate" {
				if _, err := certs.RotateDev(dir, id.Name, 0); err != nil {
					t.Fatal(err)
				}
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := pemfile.ParseCertificates(data)
			if err != nil {
				t.Fatal(err)
			}
			check(t, step+" "+id.Name, leaf[0], id.Usage)
		}
	}
}

// TestInitDevOptions: InitDev writes the trust domain it is given, refuses
// to touch existing files (changing none) unless told to overwrite them,
// and then writes a new CA.
func TestInitDevOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := certs.InitDev(dir, certs.WithTrustDomain("example.org")); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	first, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, err := os.ReadFile(filepath.Join(dir, certs.DevIdentities()[0].Name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pemfile.ParseCertificates(leafPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf[0].URIs) != 1 || leaf[0].URIs[0].Host != "example.org" {
		t.Fatalf("leaf SPIFFE ID %v, want one in example.org", leaf[0].URIs)
	}

	written, err := certs.InitDev(dir)
	if !errors.Is(err, certs.ErrExist) || len(written) != 0 {
		t.Fatalf("second InitDev: wrote %v, %v; want ErrExist", written, err)
	}
	if again, _ := os.ReadFile(caFile); !bytes.Equal(again, first) {
		t.Fatal("a refused InitDev changed the CA")
	}
	if _, err := certs.InitDev(dir, certs.WithOverwrite()); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(caFile); bytes.Equal(again, first) {
		t.Fatal("WithOverwrite left the old CA")
	}
}
