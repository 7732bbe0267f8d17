package token

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

const (
	testIssuer   = "spiffe://palisade.local/svc/user"
	testAudience = "spiffe://palisade.local/svc/user"
)

func newPair(t testing.TB, alg string) (*Issuer, *Verifier, *StaticKeys) {
	t.Helper()
	ks, err := NewKeySet(alg)
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
	keys := NewStaticKeys(pubs)
	v, err := NewVerifier(testIssuer, testAudience, keys)
	if err != nil {
		t.Fatal(err)
	}
	return iss, v, keys
}

func workload(t testing.TB, id string, cert []byte) security.Workload {
	t.Helper()
	parsed, err := spiffeid.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	return security.Workload{ID: parsed, CertSHA256: sha256.Sum256(cert)}
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{AlgEdDSA, AlgES256} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			iss, v, _ := newPair(t, alg)
			cli := workload(t, "spiffe://palisade.local/client/cli", []byte("cli cert"))
			tok, exp, err := iss.Issue(Grant{Subject: "alice", Roles: []string{"customer"}, CertSHA256: &cli.CertSHA256})
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Until(exp); d < 14*time.Minute || d > 15*time.Minute {
				t.Fatalf("exp in %v, want ~15m", d)
			}
			for i := 0; i < 2; i++ { // cold, then cached
				u, err := v.Verify(context.Background(), tok, cli)
				if err != nil {
					t.Fatalf("pass %d: %v", i, err)
				}
				if u.Subject != "alice" || !u.HasRole("customer") || !u.CertBound || u.Actor != "" || u.TokenID == "" {
					t.Fatalf("pass %d: user %+v", i, u)
				}
			}
			if v.cache.len() != 1 {
				t.Fatalf("cache holds %d entries, want 1", v.cache.len())
			}
			if hits, misses := v.CacheStats(); hits != 1 || misses != 1 {
				t.Fatalf("CacheStats = %d hits, %d misses; want 1 and 1 (cold, then cached)", hits, misses)
			}
			other := workload(t, "spiffe://palisade.local/client/other", []byte("other cert"))
			if _, err := v.Verify(context.Background(), tok, other); ReasonOf(err) != ReasonBinding {
				t.Fatalf("bound token from another certificate: %v", err)
			}
		})
	}
}

func TestCacheNeverOutlivesExpiry(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	ks, _ := NewKeySet(AlgEdDSA)
	iss, _ := NewIssuer(ks, testIssuer, WithAudience(testAudience), withClock(clock))
	pubs, _ := ks.PublicKeys()
	v, _ := NewVerifier(testIssuer, testAudience, NewStaticKeys(pubs), withClock(clock), WithLeeway(time.Second))
	w := workload(t, "spiffe://palisade.local/client/cli", []byte("c"))
	tok, _, err := iss.Issue(Grant{Subject: "alice", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), tok, w); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute + 2*time.Second)
	if _, err := v.Verify(context.Background(), tok, w); ReasonOf(err) != ReasonExpired {
		t.Fatalf("after exp: %v, want expired", err)
	}
}

func TestCacheClearedOnKeyChange(t *testing.T) {
	t.Parallel()
	iss, v, keys := newPair(t, AlgEdDSA)
	w := workload(t, "spiffe://palisade.local/client/cli", []byte("c"))
	tok, _, _ := iss.Issue(Grant{Subject: "alice"})
	if _, err := v.Verify(context.Background(), tok, w); err != nil {
		t.Fatal(err)
	}
	// Rotate twice with keep=0: the signing key is retired and the verifier's
	// key source no longer has it. The cached entry must not keep it alive.
	ks := iss.Keys()
	if _, _, err := ks.Rotate(AlgEdDSA, 0); err != nil {
		t.Fatal(err)
	}
	pubs, _ := ks.PublicKeys()
	keys.Set(pubs)
	if _, err := v.Verify(context.Background(), tok, w); ReasonOf(err) != ReasonUnknownKey {
		t.Fatalf("token of a retired key: %v, want unknown_key", err)
	}
}

func TestCacheBounded(t *testing.T) {
	t.Parallel()
	c := newCache(8)
	exp := time.Now().Add(time.Hour)
	for i := 0; i < 100; i++ {
		c.put(sha256.Sum256([]byte{byte(i)}), 1, &cacheEntry{expires: exp})
		if c.len() > 8 {
			t.Fatalf("cache grew to %d", c.len())
		}
	}
}

func TestKeySetRotateAndPersist(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/keys/signing-keys.json"
	ks, created, err := LoadOrCreateKeySet(path, AlgEdDSA)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	first := ks.Active
	second, retired, err := ks.Rotate(AlgES256, 1)
	if err != nil || len(retired) != 0 {
		t.Fatalf("rotate: %v %v", retired, err)
	}
	third, retired, err := ks.Rotate(AlgEdDSA, 1)
	if err != nil || len(retired) != 1 || retired[0] != first {
		t.Fatalf("second rotate retired %v (%v), want [%s]", retired, err, first)
	}
	if err := ks.Save(path); err != nil {
		t.Fatal(err)
	}
	again, created, err := LoadOrCreateKeySet(path, AlgEdDSA)
	if err != nil || created {
		t.Fatalf("reload: %v %v", created, err)
	}
	if again.Active != third || len(again.Keys) != 2 || again.Keys[1].ID != second || again.Keys[1].Alg != AlgES256 {
		t.Fatalf("reloaded %+v", again)
	}
	pubs, _ := again.PublicKeys()
	doc, err := MarshalJWKS(pubs)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(doc), `"d"`) || strings.Contains(string(doc), first) {
		t.Fatalf("JWKS leaks a private key or keeps a retired one: %s", doc)
	}
	parsed, err := ParseJWKS(doc)
	if err != nil || len(parsed) != 2 {
		t.Fatalf("ParseJWKS: %v %v", parsed, err)
	}
}

func TestParseJWKSRefuses(t *testing.T) {
	t.Parallel()
	ks, _ := NewKeySet(AlgEdDSA)
	pub, _ := ks.Keys[0].Public()
	good, _ := MarshalJWKS([]*PublicKey{pub})
	x := pub.jwkMust(t).X
	cases := map[string]string{
		"private member": `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k","alg":"EdDSA","d":"` + x + `"}]}`,
		"no kid":         `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `","alg":"EdDSA"}]}`,
		"hmac key":       `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k","alg":"HS256"}]}`,
		"duplicate kid":  `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k","alg":"EdDSA"},{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k","alg":"EdDSA"}]}`,
		"short x":        `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"k","alg":"EdDSA"}]}`,
		"alg mismatch":   `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k","alg":"ES256"}]}`,
		"EC off curve":   `{"keys":[{"kty":"EC","crv":"P-256","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","kid":"k","alg":"ES256"}]}`,
		"duplicate keys": `{"keys":[],"keys":[]}`,
		"not json":       `keys`,
		"encryption use": `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k","alg":"EdDSA","use":"enc"}]}`,
	}
	if _, err := ParseJWKS(good); err != nil {
		t.Fatalf("good JWKS refused: %v", err)
	}
	for name, doc := range cases {
		if keys, err := ParseJWKS([]byte(doc)); err == nil {
			t.Errorf("%s: accepted %v", name, keys)
		}
	}
}

func (p *PublicKey) jwkMust(t *testing.T) jwk {
	t.Helper()
	j, err := p.jwk()
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestThumbprintRFC7638(t *testing.T) {
	t.Parallel()
	// RFC 8037 appendix A.3: the thumbprint of the example Ed25519 key.
	x, _ := strictB64.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	p, err := NewPublicKey("", AlgEdDSA, ed25519PublicKey(x))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k" {
		t.Fatalf("thumbprint %s", p.ID)
	}
}
