package token

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/security"
)

// TestWithCacheSize: the same option bounds a Verifier's and a
// Delegator's cache, and zero turns both off.
func TestWithCacheSize(t *testing.T) {
	t.Parallel()
	ks, err := NewKeySet(AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := NewIssuer(ks, testIssuer, WithAudience(testAudience))
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	w := workload(t, "spiffe://palisade.local/client/cli", []byte("cli cert"))
	tok, _, err := iss.Issue(Grant{Subject: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1} {
		v, err := NewVerifier(testIssuer, testAudience, NewStaticKeys(pubs), WithCacheSize(size))
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := v.Verify(context.Background(), tok, w); err != nil {
				t.Fatal(err)
			}
		}
		wantHits := uint64(2 * size)
		if hits, misses := v.CacheStats(); hits != wantHits || misses != 3-wantHits {
			t.Errorf("verifier, cache size %d: %d hits, %d misses; want %d hits", size, hits, misses, wantHits)
		}

		exchanges := 0
		d := NewDelegator(func(context.Context, string) (string, time.Time, error) {
			exchanges++
			return "delegated", time.Now().Add(time.Hour), nil
		}, WithCacheSize(size))
		call := security.NewContext(context.Background(), &security.Principal{Token: security.NewSecret("alice's token")})
		for range 3 {
			if tok, err := d.Token(call); err != nil || tok != "delegated" {
				t.Fatalf("delegator: %q %v", tok, err)
			}
		}
		if want := 3 - 2*size; exchanges != want {
			t.Errorf("delegator, cache size %d: %d exchanges, want %d", size, exchanges, want)
		}
	}
}

// TestIssuerAudience: a token's aud is the grant's, else the issuer's
// (WithAudience); with neither, nothing is issued.
func TestIssuerAudience(t *testing.T) {
	t.Parallel()
	ks, err := NewKeySet(AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewIssuer(ks, ""); err == nil {
		t.Fatal("an issuer without a name was made")
	}
	bare, err := NewIssuer(ks, testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	if tok, _, err := bare.Issue(Grant{Subject: "alice"}); err == nil || tok != "" || !strings.Contains(err.Error(), "no audience") {
		t.Fatalf("no audience anywhere: %q, %v", tok, err)
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	w := workload(t, "spiffe://palisade.local/client/cli", []byte("cli cert"))
	for name, c := range map[string]struct {
		iss   *Issuer
		grant []string
	}{
		"grant's":  {iss: bare, grant: []string{testAudience}},
		"issuer's": {iss: must(NewIssuer(ks, testIssuer, WithAudience("spiffe://palisade.local/svc/other", testAudience)))},
	} {
		tok, _, err := c.iss.Issue(Grant{Subject: "alice", Audience: c.grant})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		v, err := NewVerifier(testIssuer, testAudience, NewStaticKeys(pubs))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(context.Background(), tok, w); err != nil {
			t.Fatalf("%s audience: %v", name, err)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
