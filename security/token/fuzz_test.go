package token

import (
	"context"
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
