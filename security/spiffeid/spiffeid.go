// Package spiffeid parses and validates SPIFFE IDs, the workload identities
// Palisade reads from the URI SAN of X.509 certificates.
//
// A SPIFFE ID has the form spiffe://<trust-domain>/<path>. Parsing is strict,
// following the SPIFFE ID specification: lower-case trust domain of letters,
// digits, '.', '-' and '_'; a path of segments of letters, digits, '.', '-' and
// '_'; no query, fragment, port, user info, percent-encoding, empty segment,
// or "." / ".." segment. Anything else is refused, because an identity that
// two parties could read differently is not an identity.
package spiffeid

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

const scheme = "spiffe://"

// maxLength bounds a whole SPIFFE ID, as the specification recommends (2048 bytes).
const maxLength = 2048

// ID is a parsed SPIFFE ID. The zero value is not a valid ID; use Parse.
type ID struct {
	trustDomain string
	path        string
}

// Parse parses s as a SPIFFE ID.
func Parse(s string) (ID, error) {
	if len(s) > maxLength {
		return ID{}, fmt.Errorf("spiffeid: longer than %d bytes", maxLength)
	}
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return ID{}, errors.New("spiffeid: scheme must be spiffe://")
	}
	td, path, _ := strings.Cut(rest, "/")
	if err := ValidateTrustDomain(td); err != nil {
		return ID{}, err
	}
	if strings.Contains(rest, "/") {
		path = "/" + path
		if err := validatePath(path); err != nil {
			return ID{}, err
		}
	}
	return ID{trustDomain: td, path: path}, nil
}

// FromParts builds the ID spiffe://<trustDomain><path>, validating both parts.
// path is empty or starts with '/'.
func FromParts(trustDomain, path string) (ID, error) {
	return Parse(scheme + trustDomain + path)
}

// ValidateTrustDomain reports whether td is a valid trust domain name.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("spiffeid: trust domain is empty")
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !isLowerAlnum(c) && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("spiffeid: trust domain has invalid character %q", c)
		}
	}
	return nil
}

func validatePath(path string) error {
	// path starts with '/'; every segment after it must be non-empty.
	for _, seg := range strings.Split(path[1:], "/") {
		switch seg {
		case "":
			return errors.New("spiffeid: path has an empty segment")
		case ".", "..":
			return errors.New("spiffeid: path has a dot segment")
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !isLowerAlnum(c) && !('A' <= c && c <= 'Z') && c != '.' && c != '-' && c != '_' {
				return fmt.Errorf("spiffeid: path has invalid character %q", c)
			}
		}
	}
	return nil
}

func isLowerAlnum(c byte) bool {
	return ('a' <= c && c <= 'z') || ('0' <= c && c <= '9')
}

// TrustDomain returns the ID's trust domain, for example "palisade.local".
func (id ID) TrustDomain() string { return id.trustDomain }

// Path returns the ID's path, for example "/svc/order"; it may be empty.
func (id ID) Path() string { return id.path }

// String returns the ID in its canonical form, or "" for the zero ID.
func (id ID) String() string {
	if id.trustDomain == "" {
		return ""
	}
	return scheme + id.trustDomain + id.path
}

// IsZero reports whether id is the zero value.
func (id ID) IsZero() bool { return id.trustDomain == "" }

// MemberOf reports whether id belongs to trustDomain.
func (id ID) MemberOf(trustDomain string) bool {
	return id.trustDomain != "" && id.trustDomain == trustDomain
}

// FromCertificate returns the SPIFFE ID of cert. The certificate must carry
// exactly one URI SAN and it must be a valid SPIFFE ID; a certificate with
// none, with several, or with other URI SANs beside it is refused, as the
// X509-SVID specification requires.
func FromCertificate(cert *x509.Certificate) (ID, error) {
	if cert == nil {
		return ID{}, errors.New("spiffeid: no certificate")
	}
	switch len(cert.URIs) {
	case 0:
		return ID{}, errors.New("spiffeid: certificate has no URI SAN")
	case 1:
	default:
		return ID{}, fmt.Errorf("spiffeid: certificate has %d URI SANs, want exactly one", len(cert.URIs))
	}
	return Parse(cert.URIs[0].String())
}
