package token

import (
	"context"
	"testing"
)

// BenchmarkVerify measures token verification with the signature check on
// every call (cold: cache disabled) and from the verified-token cache.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{AlgEdDSA, AlgES256} {
		for _, cached := range []bool{false, true} {
			name := alg + "/cold"
			if cached {
				name = alg + "/cached"
			}
			b.Run(name, func(b *testing.B) {
				ks, _ := NewKeySet(alg)
				iss, _ := NewIssuer(ks, testIssuer, WithAudience(testAudience))
				pubs, _ := ks.PublicKeys()
				size := DefaultCacheSize
				if !cached {
					size = 0
				}
				v, _ := NewVerifier(testIssuer, testAudience, NewStaticKeys(pubs), WithCacheSize(size))
				w := workload(b, "spiffe://palisade.local/client/cli", []byte("cli cert"))
				tok, _, err := iss.Issue(Grant{Subject: "alice", Roles: []string{"customer"}, CertSHA256: &w.CertSHA256})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := v.Verify(ctx, tok, w); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
