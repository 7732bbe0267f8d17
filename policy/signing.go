package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/keys"
)

// verificationKey checks a bundle verification key for WithSigningKey and
// returns OPA's configuration of it. Errors name the key id and the
// problem, never the key's bytes.
func verificationKey(keyID, alg string, publicKeyPEM []byte) (*keys.Config, error) {
	if keyID == "" {
		return nil, errors.New("policy: bundle signing key: empty key id")
	}
	fail := func(format string, args ...any) (*keys.Config, error) {
		return nil, fmt.Errorf("policy: bundle signing key %q: "+format, append([]any{keyID}, args...)...)
	}
	block, rest := pem.Decode(publicKeyPEM)
	if block == nil {
		return fail("no PEM block")
	}
	if p, _ := pem.Decode(rest); p != nil {
		return fail("more than one PEM block")
	}
	var pub any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		if strings.Contains(block.Type, "PRIVATE") {
			return fail("a private key (%s); give the public key", block.Type)
		}
		return fail("a %s block; want PUBLIC KEY or RSA PUBLIC KEY", block.Type)
	}
	if err != nil {
		return fail("%w", err)
	}
	fits := func(prefixes ...string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(alg, p) {
				return true
			}
		}
		return false
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if alg == "" {
			alg = "RS256"
		}
		if !fits("RS", "PS") {
			return fail("an RSA key cannot verify %s", alg)
		}
	case *ecdsa.PublicKey:
		want := map[elliptic.Curve]string{elliptic.P256(): "ES256", elliptic.P384(): "ES384", elliptic.P521(): "ES512"}[k.Curve]
		if want == "" {
			return fail("an ECDSA key on an unsupported curve")
		}
		if alg == "" {
			alg = want
		}
		if alg != want {
			return fail("an ECDSA %s key cannot verify %s (want %s)", k.Curve.Params().Name, alg, want)
		}
	default:
		return fail("a %T; want an RSA or ECDSA public key", pub)
	}
	if !keys.IsSupportedAlgorithm(alg) {
		return fail("unsupported algorithm %q", alg)
	}
	return &keys.Config{Key: string(publicKeyPEM), Algorithm: alg}, nil
}
