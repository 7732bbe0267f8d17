package token

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// maxJWKSBytes caps a JWKS document; a real one is a few hundred bytes a key.
const maxJWKSBytes = 64 << 10

// maxJWKSKeys caps the number of keys accepted from one JWKS.
const maxJWKSKeys = 32

// PublicKey is a verification key: its ID, the one algorithm it verifies,
// and the key itself (ed25519.PublicKey or *ecdsa.PublicKey on P-256).
type PublicKey struct {
	ID  string
	Alg string
	Key crypto.PublicKey
}

// NewPublicKey checks that key suits alg and returns the PublicKey. An empty
// id is replaced by the key's RFC 7638 thumbprint.
func NewPublicKey(id, alg string, key crypto.PublicKey) (*PublicKey, error) {
	switch alg {
	case AlgEdDSA:
		k, ok := key.(ed25519.PublicKey)
		if !ok || len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("token: %s needs an Ed25519 public key", alg)
		}
	case AlgES256:
		k, ok := key.(*ecdsa.PublicKey)
		if !ok || k.Curve.Params().Name != "P-256" {
			return nil, fmt.Errorf("token: %s needs a P-256 public key", alg)
		}
	default:
		return nil, fmt.Errorf("token: unsupported algorithm %q", alg)
	}
	p := &PublicKey{ID: id, Alg: alg, Key: key}
	if id == "" {
		tp, err := Thumbprint(p)
		if err != nil {
			return nil, err
		}
		p.ID = tp
	}
	return p, nil
}

// jwk is the JSON form of a public key (RFC 7517, RFC 8037).
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
	// D is read only to refuse a JWKS that leaks a private key.
	D string `json:"d,omitempty"`
}

func (p *PublicKey) jwk() (jwk, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := p.Key.(type) {
	case ed25519.PublicKey:
		return jwk{Kty: "OKP", Crv: "Ed25519", X: b64(k), Kid: p.ID, Alg: p.Alg, Use: "sig"}, nil
	case *ecdsa.PublicKey:
		raw, err := k.Bytes() // uncompressed point: 0x04 || X || Y
		if err != nil {
			return jwk{}, fmt.Errorf("token: encode key: %w", err)
		}
		return jwk{Kty: "EC", Crv: "P-256", X: b64(raw[1:33]), Y: b64(raw[33:]), Kid: p.ID, Alg: p.Alg, Use: "sig"}, nil
	}
	return jwk{}, errors.New("token: unsupported key type")
}

// Thumbprint returns the RFC 7638 JWK thumbprint of p (SHA-256, base64url).
func Thumbprint(p *PublicKey) (string, error) {
	j, err := p.jwk()
	if err != nil {
		return "", err
	}
	// The required members in lexicographic order, no white space.
	var canonical string
	switch j.Kty {
	case "OKP":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":%q,"x":%q}`, j.Crv, j.Kty, j.X)
	case "EC":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":%q,"x":%q,"y":%q}`, j.Crv, j.Kty, j.X, j.Y)
	}
	sum := sha256.Sum256([]byte(canonical))
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// MarshalJWKS returns the JWKS document for keys.
func MarshalJWKS(keys []*PublicKey) ([]byte, error) {
	doc := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	for _, k := range keys {
		j, err := k.jwk()
		if err != nil {
			return nil, err
		}
		doc.Keys = append(doc.Keys, j)
	}
	return json.Marshal(doc)
}

// ParseJWKS parses a JWKS document strictly: every key must be an Ed25519
// (OKP, alg EdDSA) or P-256 (EC, alg ES256) signing key with a kid, a valid
// point, and no private member; kids must be unique. Keys of other types are
// an error, not skipped: a key set this verifier cannot fully understand is
// not one it should half-trust.
func ParseJWKS(data []byte) ([]*PublicKey, error) {
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("token: JWKS larger than %d bytes", maxJWKSBytes)
	}
	if err := checkJSON(data); err != nil {
		return nil, fmt.Errorf("token: JWKS: %w", err)
	}
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("token: JWKS: %w", err)
	}
	if len(doc.Keys) > maxJWKSKeys {
		return nil, fmt.Errorf("token: JWKS has %d keys, more than %d", len(doc.Keys), maxJWKSKeys)
	}
	seen := map[string]bool{}
	out := make([]*PublicKey, 0, len(doc.Keys))
	for i, j := range doc.Keys {
		k, err := j.publicKey()
		if err != nil {
			return nil, fmt.Errorf("token: JWKS key %d: %w", i, err)
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("token: JWKS: duplicate kid %q", k.ID)
		}
		seen[k.ID] = true
		out = append(out, k)
	}
	return out, nil
}

func (j jwk) publicKey() (*PublicKey, error) {
	if j.D != "" {
		return nil, errors.New("holds a private key")
	}
	if j.Kid == "" || len(j.Kid) > 128 {
		return nil, errors.New("kid missing or too long")
	}
	if j.Use != "" && j.Use != "sig" {
		return nil, fmt.Errorf("use %q is not sig", j.Use)
	}
	dec := base64.RawURLEncoding.Strict()
	x, err := dec.DecodeString(j.X)
	if err != nil {
		return nil, fmt.Errorf("x: %w", err)
	}
	switch {
	case j.Kty == "OKP" && j.Crv == "Ed25519" && j.Alg == AlgEdDSA:
		if j.Y != "" || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("malformed Ed25519 key")
		}
		return &PublicKey{ID: j.Kid, Alg: AlgEdDSA, Key: ed25519.PublicKey(x)}, nil
	case j.Kty == "EC" && j.Crv == "P-256" && j.Alg == AlgES256:
		y, err := dec.DecodeString(j.Y)
		if err != nil {
			return nil, fmt.Errorf("y: %w", err)
		}
		if len(x) != 32 || len(y) != 32 {
			return nil, errors.New("malformed P-256 key")
		}
		// ParseUncompressedPublicKey refuses points that are not on the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("P-256 point: %w", err)
		}
		return &PublicKey{ID: j.Kid, Alg: AlgES256, Key: pub}, nil
	}
	return nil, fmt.Errorf("unsupported key (kty %q, crv %q, alg %q)", j.Kty, j.Crv, j.Alg)
}
