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
	"encoding/asn1"
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
	// full is the whole ID, built once: String is on every call's path
	// (logs, the policy input, the decision cache key).
	full string
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
	return ID{trustDomain: td, path: path, full: scheme + td + path}, nil
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
func (id ID) String() string { return id.full }

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
//
// The URI SAN is parsed from the bytes the CA signed, not from the
// url.URL crypto/x509 made of them: url.Parse normalizes (it lower-cases
// the scheme and drops an empty fragment), so "SPIFFE://td/svc" or
// "spiffe://td/svc#" would otherwise be read as spiffe://td/svc.
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
	raw, found, err := rawURISANs(cert)
	if err != nil {
		return ID{}, err
	}
	if !found {
		// A certificate built in memory rather than parsed: only its URIs exist.
		return Parse(cert.URIs[0].String())
	}
	if len(raw) != 1 {
		return ID{}, fmt.Errorf("spiffeid: certificate has %d URI SANs, want exactly one", len(raw))
	}
	return Parse(raw[0])
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// rawURISANs returns the uniformResourceIdentifier names of cert's
// subjectAltName extension as encoded, and whether it has that extension.
func rawURISANs(cert *x509.Certificate) ([]string, bool, error) {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &seq)
		if err != nil || len(rest) > 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
			return nil, true, errors.New("spiffeid: malformed subjectAltName extension")
		}
		var uris []string
		for b := seq.Bytes; len(b) > 0; {
			var name asn1.RawValue
			if b, err = asn1.Unmarshal(b, &name); err != nil {
				return nil, true, errors.New("spiffeid: malformed subjectAltName extension")
			}
			if name.Class == asn1.ClassContextSpecific && name.Tag == 6 { // uniformResourceIdentifier
				uris = append(uris, string(name.Bytes))
			}
		}
		return uris, true, nil
	}
	return nil, false, nil
}
