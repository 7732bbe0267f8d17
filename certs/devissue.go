package certs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// devName is what a leaf's file name may be: <name>.pem, <name>-key.pem.
var devName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// IssueDev issues a new leaf l with the development CA in dir — for a new
// workload, say — and writes it into out (created with mode 0700) as
// <name>.pem and <name>-key.pem (mode 0600), beside a copy of the CA
// certificate, ca.pem, which the workload needs as its trust bundle. It
// returns the paths it wrote.
//
// l.SPIFFEID is required and must be in the CA's trust domain: a
// certificate the CA's own servers would refuse is not issued. When any of
// the files exists (a ca.pem identical to the CA's excepted) and
// WithOverwrite is not given, IssueDev writes nothing and returns an error
// wrapping ErrExist. The key is written before the certificate, each
// atomically, as RotateDev does. WithTrustDomain does not apply: the trust
// domain is the CA's.
func IssueDev(dir, out, name string, l Leaf, opts ...DevOption) ([]string, error) {
	var cfg devConfig
	for _, o := range opts {
		o.applyDev(&cfg)
	}
	if !devName.MatchString(name) || name == "ca" || name == "ca-key" {
		return nil, fmt.Errorf("certs: issue: %q is not a usable file name (letters, digits, '.', '_', '-'; not ca)", name)
	}
	if l.SPIFFEID == "" {
		return nil, errors.New("certs: issue: a SPIFFE ID is required")
	}
	id, err := spiffeid.Parse(l.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("certs: issue: %w", err)
	}
	ca, err := LoadDevCA(dir)
	if err != nil {
		return nil, err
	}
	caID, err := spiffeid.FromCertificate(ca.Cert)
	if err != nil {
		return nil, fmt.Errorf("certs: issue: the CA in %s names no trust domain: %w", dir, err)
	}
	if !id.MemberOf(caID.TrustDomain()) {
		return nil, fmt.Errorf("certs: issue: %s is not in the CA's trust domain %s", id, caID.TrustDomain())
	}

	caFile := filepath.Join(out, "ca.pem")
	keyFile, certFile := filepath.Join(out, name+"-key.pem"), filepath.Join(out, name+".pem")
	caPEM := ca.CertPEM()
	writeCA := true
	if data, err := os.ReadFile(caFile); err == nil && bytes.Equal(data, caPEM) {
		writeCA = false // the same bundle: nothing to overwrite
	}
	if !cfg.overwrite {
		var existing []string
		for _, path := range []string{keyFile, certFile, caFile} {
			if path == caFile && !writeCA {
				continue
			}
			if _, err := os.Lstat(path); err == nil {
				existing = append(existing, path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("certs: issue: %w", err)
			}
		}
		if len(existing) > 0 {
			return nil, fmt.Errorf("%w: %v", ErrExist, existing)
		}
	}

	issued, err := ca.Issue(l)
	if err != nil {
		return nil, err
	}
	keyPEM, err := issued.KeyPEM()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return nil, fmt.Errorf("certs: issue: %w", err)
	}
	var written []string
	if writeCA {
		if err := pemfile.WriteFileAtomic(caFile, caPEM, 0o644); err != nil {
			return written, err
		}
		written = append(written, caFile)
	}
	if err := pemfile.WriteFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return written, err
	}
	written = append(written, keyFile)
	if err := pemfile.WriteFileAtomic(certFile, issued.CertPEM(), 0o644); err != nil {
		return written, err
	}
	return append(written, certFile), nil
}
