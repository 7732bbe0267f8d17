package mtls_test

import (
	"context"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// fileFixture is a FileSource over files in a temporary directory.
type fileFixture struct {
	ca    *certstest.CA
	files certstest.Files
	first *certs.Issued
	src   *mtls.FileSource
	logs  *rpctest.Logs
}

func newFileFixture(t *testing.T, opts ...mtls.FileSourceOption) *fileFixture {
	t.Helper()
	ca := certstest.NewCA(t)
	first := ca.Server("/svc/user")
	files := ca.WriteFiles(t.TempDir(), "usersvc", first)
	logger, logs := rpctest.NewLogger(t)
	src, err := mtls.NewFileSource(files.Cert, files.Key, files.CA, append([]mtls.FileSourceOption{mtls.WithLogger(logger)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return &fileFixture{ca: ca, files: files, first: first, src: src, logs: logs}
}

func serial(t *testing.T, src mtls.Source) string {
	t.Helper()
	c, err := src.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := pemfile.WriteFileAtomic(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func keyPEM(t *testing.T, i *certs.Issued) []byte {
	t.Helper()
	k, err := i.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writePair replaces the certificate and key files with issued.
func (f *fileFixture) writePair(t *testing.T, issued *certs.Issued) {
	t.Helper()
	f.ca.WritePair(f.files, issued)
}

func TestFileSourceRefusesBadMaterial(t *testing.T) {
	t.Parallel()
	now := time.Now()
	cases := map[string]struct {
		write  func(t *testing.T, f *fileFixture)
		reason string
	}{
		"unparsable certificate": {
			write:  func(t *testing.T, f *fileFixture) { write(t, f.files.Cert, []byte("not a certificate")) },
			reason: "failed to find any PEM data in certificate input",
		},
		"unparsable key": {
			write:  func(t *testing.T, f *fileFixture) { write(t, f.files.Key, []byte("not a key")) },
			reason: "failed to find any PEM data in key input",
		},
		"corrupt key DER": {
			write: func(t *testing.T, f *fileFixture) {
				write(t, f.files.Key, []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"))
			},
			reason: "failed to parse private key",
		},
		"key does not match the certificate": {
			write:  func(t *testing.T, f *fileFixture) { write(t, f.files.Cert, f.ca.Server("/svc/user").CertPEM()) },
			reason: "private key does not match public key",
		},
		"expired": {
			write: func(t *testing.T, f *fileFixture) {
				f.writePair(t, f.ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/user", Usage: certs.UsageWorkload,
					NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}))
			},
			reason: "expired at",
		},
		"not yet valid": {
			write: func(t *testing.T, f *fileFixture) {
				f.writePair(t, f.ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/user", Usage: certs.UsageWorkload,
					NotBefore: now.Add(time.Hour), Validity: time.Hour}))
			},
			reason: "is not valid before",
		},
		"another SPIFFE ID": {
			write:  func(t *testing.T, f *fileFixture) { f.writePair(t, f.ca.Server("/svc/order")) },
			reason: "is for spiffe://palisade.local/svc/order, but this source serves spiffe://palisade.local/svc/user",
		},
		"no SPIFFE ID": {
			write:  func(t *testing.T, f *fileFixture) { f.writePair(t, f.ca.Issue(certs.Leaf{Usage: certs.UsageWorkload})) },
			reason: "certificate has no URI SAN",
		},
		"certificate from another CA": {
			write:  func(t *testing.T, f *fileFixture) { f.writePair(t, certstest.NewCA(t).Server("/svc/user")) },
			reason: "does not chain to the CA bundle",
		},
		"unparsable CA bundle": {
			write:  func(t *testing.T, f *fileFixture) { write(t, f.files.CA, []byte("garbage")) },
			reason: "no CERTIFICATE block",
		},
		"CA bundle holding a leaf": {
			write:  func(t *testing.T, f *fileFixture) { write(t, f.files.CA, f.first.CertPEM()) },
			reason: "holds a certificate that is not a CA",
		},
		"CA bundle without the issuer": {
			write:  func(t *testing.T, f *fileFixture) { write(t, f.files.CA, certstest.NewCA(t).CertPEM()) },
			reason: "does not chain to the CA bundle",
		},
		"CA:TRUE certificate": {
			write: func(t *testing.T, f *fileFixture) {
				f.writePair(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.IsCA = true })))
			},
			reason: "is a CA certificate (CA:TRUE)",
		},
		"no basic constraints": {
			write: func(t *testing.T, f *fileFixture) {
				f.writePair(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.BasicConstraintsValid = false })))
			},
			reason: "has no basic constraints",
		},
		"no extended key usage": {
			write: func(t *testing.T, f *fileFixture) {
				f.writePair(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.ExtKeyUsage = nil })))
			},
			reason: "lacks the clientAuth extended key usage",
		},
		"clientAuth only, for a source that serves": {
			write: func(t *testing.T, f *fileFixture) {
				f.writePair(t, f.ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/user", Usage: certs.UsageClient}))
			},
			reason: "lacks the serverAuth extended key usage",
		},
		"key file removed": {
			write: func(t *testing.T, f *fileFixture) {
				if err := os.Remove(f.files.Key); err != nil {
					t.Fatal(err)
				}
			},
			reason: "no such file or directory",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFileFixture(t)
			before := serial(t, f.src)
			tc.write(t, f)
			err := f.src.Reload()
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Reload: %v, want an error saying %q", err, tc.reason)
			}
			if got := serial(t, f.src); got != before {
				t.Fatalf("serving serial %s after a refused reload, want the last good %s", got, before)
			}
			line := f.logs.WaitForLog(t, "certificate files refused", tc.reason)
			assertNoKeyMaterial(t, f, line+err.Error())

			// Good material again (a new pair, same identity) is taken.
			next := f.ca.Server("/svc/user")
			write(t, f.files.CA, f.ca.CertPEM())
			f.writePair(t, next)
			if err := f.src.Reload(); err != nil {
				t.Fatalf("Reload of good material: %v", err)
			}
			if got := serial(t, f.src); got != next.Cert.SerialNumber.String() {
				t.Fatalf("serving %s, want the new certificate %s", got, next.Cert.SerialNumber)
			}
		})
	}
}

// assertNoKeyMaterial fails if text holds any line of the base64 body of
// the private keys in f's directory or of the first key.
func assertNoKeyMaterial(t *testing.T, f *fileFixture, text string) {
	t.Helper()
	keys := [][]byte{keyPEM(t, f.first)}
	if data, err := os.ReadFile(f.files.Key); err == nil {
		keys = append(keys, data)
	}
	for _, k := range keys {
		for _, l := range strings.Split(string(k), "\n") {
			if len(l) >= 16 && !strings.HasPrefix(l, "-----") && strings.Contains(text, l) {
				t.Fatalf("key material in a log line or error: %q", text)
			}
		}
	}
}

func TestNewFileSourceValidates(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	expired := ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/user", Usage: certs.UsageWorkload,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	files := ca.WriteFiles(dir, "expired", expired)
	if _, err := mtls.NewFileSource(files.Cert, files.Key, files.CA); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("NewFileSource with an expired certificate: %v", err)
	}
	for name, tc := range map[string]struct {
		cert   *certs.Issued
		reason string
	}{
		"CA:TRUE":               {ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.IsCA = true })), "is a CA certificate"},
		"no basic constraints":  {ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.BasicConstraintsValid = false })), "has no basic constraints"},
		"no extended key usage": {ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.ExtKeyUsage = nil })), "neither the clientAuth nor the serverAuth"},
		"anyExtendedKeyUsage only": {ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
		})), "neither the clientAuth nor the serverAuth"},
	} {
		files := ca.WriteFiles(dir, strings.ReplaceAll(name, " ", "-"), tc.cert)
		if _, err := mtls.NewFileSource(files.Cert, files.Key, files.CA); err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("NewFileSource with a certificate with %s: %v, want an error saying %q", name, err, tc.reason)
		}
	}
	// A client's certificate (clientAuth only) is a workload certificate too.
	client := ca.WriteFiles(dir, "cli", ca.Client("/client/cli"))
	if _, err := mtls.NewFileSource(client.Cert, client.Key, client.CA); err != nil {
		t.Fatalf("NewFileSource with a client certificate: %v", err)
	}
	good := ca.WriteFiles(dir, "good", ca.Server("/svc/user"))
	if _, err := mtls.NewFileSource(good.Cert, good.Key, good.CA, mtls.WithCRL(filepath.Join(dir, "missing.pem"))); err == nil {
		t.Fatal("NewFileSource accepted a CRL file that does not exist")
	}
	src, err := mtls.NewFileSource(good.Cert, good.Key, good.CA)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := mtls.IdentityOf(src); err != nil || id.String() != "spiffe://palisade.local/svc/user" {
		t.Fatalf("IdentityOf = %s, %v", id, err)
	}
}

func TestWatchReloadsLogsOnceAndStops(t *testing.T) {
	t.Parallel()
	f := newFileFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.src.Watch(ctx, 5*time.Millisecond) }()
	t.Cleanup(cancel)

	next := f.ca.Server("/svc/user")
	f.writePair(t, next)
	rpctest.WaitFor(t, "the watcher to load the new certificate", func() bool { return serial(t, f.src) == next.Cert.SerialNumber.String() })
	f.logs.WaitForLog(t, "certificate reloaded", "serial="+next.Cert.SerialNumber.Text(16))

	// A bad file is refused and logged once, however many polls see it.
	f.writePair(t, f.ca.Server("/svc/order"))
	f.logs.WaitForLog(t, "certificate files refused", "svc/order")
	time.Sleep(100 * time.Millisecond) // about twenty more polls
	if n := f.logs.Count("but this source serves"); n != 1 {
		t.Fatalf("the refusal was logged %d times, want once", n)
	}
	if serial(t, f.src) != next.Cert.SerialNumber.String() {
		t.Fatal("the refused certificate replaced the last good one")
	}

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Watch returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after its context was cancelled")
	}
	if err := f.src.Watch(context.Background(), 0); err == nil {
		t.Fatal("Watch accepted a zero interval")
	}
}

func TestCRLReload(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	files := ca.WriteFiles(dir, "usersvc", ca.Server("/svc/user"))
	revoked, kept := ca.Client("/client/cli"), ca.Client("/client/cli")
	crlFile := filepath.Join(dir, "crl.pem")
	ca.WriteCRL(crlFile, 1, revoked.Cert)

	logger, logs := rpctest.NewLogger(t)
	src, err := mtls.NewFileSource(files.Cert, files.Key, files.CA, mtls.WithCRL(crlFile), mtls.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	chain := func(c *certs.Issued) [][]*x509.Certificate { return [][]*x509.Certificate{{c.Cert, ca.Cert}} }
	if err := src.CheckRevocation(chain(revoked)); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked certificate: %v", err)
	}
	if err := src.CheckRevocation(chain(kept)); err != nil {
		t.Fatalf("certificate not on the CRL: %v", err)
	}

	changed := src.RevocationsChanged()
	closed := func() bool {
		select {
		case <-changed:
			return true
		default:
			return false
		}
	}

	// A CRL signed by another CA is refused; the last good one stays.
	certstest.NewCA(t).WriteCRL(crlFile, 2, kept.Cert)
	if err := src.Reload(); err == nil || !strings.Contains(err.Error(), "not signed by a CA of the trust bundle") {
		t.Fatalf("Reload with a foreign CRL: %v", err)
	}
	logs.WaitForLog(t, "CRL refused", "not signed by a CA of the trust bundle")
	if src.CheckRevocation(chain(revoked)) == nil || src.CheckRevocation(chain(kept)) != nil {
		t.Fatal("a refused CRL changed what is revoked")
	}
	// So is garbage.
	write(t, crlFile, []byte("garbage"))
	if err := src.Reload(); err == nil {
		t.Fatal("Reload accepted an unparsable CRL")
	}
	if closed() {
		t.Fatal("RevocationsChanged fired for refused CRLs")
	}

	// A good CRL is taken, by the watcher.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, 5*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	ca.WriteCRL(crlFile, 3, revoked.Cert, kept.Cert)
	rpctest.WaitFor(t, "the new CRL", func() bool { return src.CheckRevocation(chain(kept)) != nil })
	logs.WaitForLog(t, "CRL reloaded", "revoked=2")
	if !closed() {
		t.Fatal("RevocationsChanged did not fire for the new CRL")
	}
	if next := src.RevocationsChanged(); next == changed {
		t.Fatal("RevocationsChanged returned the closed channel again")
	}
}

// TestStaleCRLStaysInForce: a CRL past its NextUpdate still revokes (a
// revocation does not lapse), and the source warns about it once.
func TestStaleCRLStaysInForce(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	files := ca.WriteFiles(dir, "usersvc", ca.Server("/svc/user"))
	revoked := ca.Client("/client/cli")
	crlFile := filepath.Join(dir, "crl.pem")
	data, _, err := ca.CreateCRL(certs.CRL{
		Revoked:    []x509.RevocationListEntry{{SerialNumber: revoked.Cert.SerialNumber, RevocationTime: time.Now().Add(-48 * time.Hour)}},
		Number:     big.NewInt(1),
		ThisUpdate: time.Now().Add(-48 * time.Hour), NextUpdate: time.Now().Add(-time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	write(t, crlFile, data)

	logger, logs := rpctest.NewLogger(t)
	src, err := mtls.NewFileSource(files.Cert, files.Key, files.CA, mtls.WithCRL(crlFile), mtls.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	if err := src.CheckRevocation([][]*x509.Certificate{{revoked.Cert, ca.Cert}}); err == nil {
		t.Fatal("a stale CRL revoked nothing")
	}
	logs.WaitForLog(t, "CRL is past its next update", "next_update=")
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, 5*time.Millisecond) }()
	time.Sleep(50 * time.Millisecond) // some polls of the same, stale file
	cancel()
	<-done
	// Once at start, once for the reloaded (new) copy; polls of the same file add none.
	if n := logs.Count("CRL is past its next update"); n != 2 {
		t.Fatalf("%d warnings, want 2", n)
	}
}
