package spiffeid

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	casn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// certWithURIs returns the DER of a self-signed certificate whose
// subjectAltName holds uris exactly as given (x509.CreateCertificate would
// normalize them through url.URL.String).
func certWithURIs(tb testing.TB, key *ecdsa.PrivateKey, uris ...string) []byte {
	tb.Helper()
	names := make([]asn1.RawValue, len(uris))
	for i, u := range uris {
		names[i] = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)}
	}
	san, err := asn1.Marshal(names)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"Palisade"}},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0),
		ExtraExtensions: []pkix.Extension{{Id: oidSubjectAltName, Value: san}},
	}
	if len(uris) == 0 {
		tmpl.ExtraExtensions = nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// TestFromParsedCertificate reads SPIFFE IDs from real certificates,
// including URI SANs that url.Parse would normalize into a valid ID.
func TestFromParsedCertificate(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		uris []string
		want string // "" for a refusal
	}{
		"valid":               {uris: []string{"spiffe://palisade.local/svc/user"}, want: "spiffe://palisade.local/svc/user"},
		"trust domain only":   {uris: []string{"spiffe://palisade.local"}, want: "spiffe://palisade.local"},
		"empty fragment":      {uris: []string{"spiffe://palisade.local/svc/user#"}},
		"upper-case scheme":   {uris: []string{"SPIFFE://palisade.local/svc/user"}},
		"mixed-case scheme":   {uris: []string{"Spiffe://palisade.local/svc/user"}},
		"empty query":         {uris: []string{"spiffe://palisade.local/svc/user?"}},
		"percent-encoded":     {uris: []string{"spiffe://palisade.local/svc/%75ser"}},
		"two URIs":            {uris: []string{"spiffe://palisade.local/a", "spiffe://palisade.local/b"}},
		"no SAN":              {},
		"other scheme":        {uris: []string{"https://palisade.local/svc/user"}},
		"empty port":          {uris: []string{"spiffe://palisade.local:/svc/user"}},
		"empty user info":     {uris: []string{"spiffe://@palisade.local/svc/user"}},
		"trailing slash":      {uris: []string{"spiffe://palisade.local/svc/user/"}},
		"upper-case host":     {uris: []string{"spiffe://Palisade.local/svc/user"}},
		"non-ASCII path":      {uris: []string{"spiffe://palisade.local/svc/us\u00e9r"}},
		"dot-dot in the path": {uris: []string{"spiffe://palisade.local/svc/../admin"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cert, err := x509.ParseCertificate(certWithURIs(t, key, tc.uris...))
			if err != nil {
				if tc.want != "" {
					t.Fatal(err)
				}
				return // crypto/x509 refuses it already
			}
			id, err := FromCertificate(cert)
			switch {
			case tc.want == "" && err == nil:
				t.Fatalf("accepted %v as %s", tc.uris, id)
			case tc.want != "" && (err != nil || id.String() != tc.want):
				t.Fatalf("got %v, %v; want %s", id, err, tc.want)
			}
		})
	}
}

// signedURIs reads the URI SANs of cert as encoded, with cryptobyte: a
// second reader, independent of the one FromCertificate uses.
func signedURIs(t *testing.T, cert *x509.Certificate) []string {
	var uris []string
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		in, seq := cryptobyte.String(ext.Value), cryptobyte.String(nil)
		if !in.ReadASN1(&seq, casn1.SEQUENCE) {
			t.Fatalf("crypto/x509 accepted a malformed SAN extension %x", ext.Value)
		}
		for !seq.Empty() {
			var name cryptobyte.String
			var tag casn1.Tag
			if !seq.ReadAnyASN1(&name, &tag) {
				t.Fatalf("crypto/x509 accepted a malformed SAN extension %x", ext.Value)
			}
			if tag == casn1.Tag(6).ContextSpecific() {
				uris = append(uris, string(name))
			}
		}
	}
	return uris
}

// FuzzFromCertificate: arbitrary DER through x509.ParseCertificate and
// FromCertificate never panics, and an accepted ID round-trips: it is
// exactly the one URI SAN the certificate's signed bytes hold (read by a
// second parser), crypto/x509's reading of it agrees and is canonical, and
// it parses back to itself.
func FuzzFromCertificate(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	for _, uris := range [][]string{
		{"spiffe://palisade.local/svc/order"},
		{"spiffe://palisade.local"},
		{"spiffe://palisade.local/svc/order#"},
		{"SPIFFE://palisade.local/svc/order"},
		{"spiffe://palisade.local/a", "spiffe://palisade.local/b"},
		{"spiffe://palisade.local/%61"},
		nil,
	} {
		f.Add(certWithURIs(f, key, uris...))
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		id, err := FromCertificate(cert)
		if err != nil {
			if id != (ID{}) {
				t.Fatalf("error %v with a non-zero ID %v", err, id)
			}
			return
		}
		if signed := signedURIs(t, cert); len(signed) != 1 || signed[0] != id.String() {
			t.Fatalf("ID %s from a certificate whose signed URI SANs are %q", id, signed)
		}
		u := cert.URIs[0]
		if len(cert.URIs) != 1 || u.String() != id.String() {
			t.Fatalf("ID %s from a certificate whose URI SANs read %v", id, cert.URIs)
		}
		if u.Scheme != "spiffe" || u.Host != id.TrustDomain() || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
			t.Fatalf("ID %s from the non-canonical URI %#v", id, u)
		}
		again, err := Parse(id.String())
		if err != nil || again != id {
			t.Fatalf("re-parse of %s: %v %v", id, again, err)
		}
	})
}
