package token

import (
	"context"
	"crypto"
	"strings"
	"testing"
)

// FuzzVerify feeds arbitrary strings to the verifier. It must never panic,
// and nothing but the one genuine token may verify: with canonical base64url,
// a signature over the exact header and payload bytes and non-malleable
// Ed25519, any other accepted string would be a forgery.
func FuzzVerify(f *testing.F) {
	iss, v, _ := newPair(f, AlgEdDSA)
	w := workload(f, "spiffe://palisade.local/client/cli", []byte("cli cert"))
	genuine, _, err := iss.Issue(Grant{Subject: "alice", Roles: []string{"customer"}, CertSHA256: &w.CertSHA256})
	if err != nil {
		f.Fatal(err)
	}
	segs := strings.Split(genuine, ".")
	for _, seed := range []string{
		genuine,
		segs[0] + "." + segs[1] + ".",
		segs[0] + "." + segs[1],
		genuine + "." + segs[2],
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
		"eyJhbGciOiJIUzI1NiIsImtpZCI6IngiLCJ0eXAiOiJhdCtqd3QifQ.e30.c2ln",
		"...",
		"",
		strings.Repeat("A", 9000),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := v.Verify(context.Background(), raw, w)
		if err == nil && raw != genuine {
			t.Fatalf("accepted a token that was not issued: %q (user %+v)", raw, u)
		}
		if err != nil && ReasonOf(err) == "" {
			t.Fatalf("error without a reason: %v", err)
		}
		if err != nil && len(raw) > 16 && strings.Contains(err.Error(), raw) {
			t.Fatalf("error echoes the token: %v", err)
		}
	})
}

// FuzzParseJWKS: ParseJWKS never panics, and a key set it accepts
// re-marshals (MarshalJWKS) and re-parses to the same keys, in order: same
// kid, same algorithm, same public key. What the verifier trusts is
// therefore exactly what the document says, with nothing lost or added by
// a second reading.
func FuzzParseJWKS(f *testing.F) {
	var pubs []*PublicKey
	for _, alg := range []string{AlgEdDSA, AlgES256} {
		k, err := GenerateKey(alg)
		if err != nil {
			f.Fatal(err)
		}
		p, err := k.Public()
		if err != nil {
			f.Fatal(err)
		}
		pubs = append(pubs, p)
	}
	genuine, err := MarshalJWKS(pubs)
	if err != nil {
		f.Fatal(err)
	}
	one, err := MarshalJWKS(pubs[:1])
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(genuine),
		string(one),
		strings.Replace(string(one), `"use":"sig"`, `"use":"sig","d":"AAAA"`, 1),
		strings.Replace(string(genuine), pubs[1].ID, pubs[0].ID, 1),
		strings.Replace(string(one), `"kty"`, `"extra":1,"kty"`, 1),
		strings.Replace(string(one), `"kty"`, `"kty":"RSA","kty"`, 1),
		`{"keys":[]}`,
		`{"keys":null}`,
		`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}]}`,
		`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=","kid":"p","alg":"EdDSA"}]}`,
		"\xef\xbb\xbf" + string(one),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseJWKS(data)
		if err != nil {
			return
		}
		out, err := MarshalJWKS(keys)
		if err != nil {
			t.Fatalf("accepted keys do not marshal: %v", err)
		}
		again, err := ParseJWKS(out)
		if err != nil {
			t.Fatalf("re-marshalled JWKS %s does not parse: %v", out, err)
		}
		if len(again) != len(keys) {
			t.Fatalf("%d keys became %d", len(keys), len(again))
		}
		for i, k := range keys {
			a := again[i]
			eq, ok := k.Key.(interface{ Equal(crypto.PublicKey) bool })
			if a.ID != k.ID || a.Alg != k.Alg || !ok || !eq.Equal(a.Key) {
				t.Fatalf("key %d changed in the round trip: %+v became %+v", i, k, a)
			}
		}
	})
}
