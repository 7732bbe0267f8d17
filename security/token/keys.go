package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/palisade-rpc/palisade/internal/pemfile"
)

// Signing algorithms. The key, never the token, decides which one applies.
const (
	AlgEdDSA = "EdDSA" // Ed25519, the default
	AlgES256 = "ES256" // ECDSA P-256 with SHA-256
)

// SigningKey is a private key the issuer signs tokens with.
type SigningKey struct {
	ID      string
	Alg     string
	Created time.Time
	Private crypto.Signer
}

// GenerateKey creates a signing key for alg (AlgEdDSA or AlgES256). Its ID is
// the RFC 7638 thumbprint of its public JWK.
func GenerateKey(alg string) (*SigningKey, error) {
	var priv crypto.Signer
	switch alg {
	case AlgEdDSA:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("token: generate key: %w", err)
		}
		priv = k
	case AlgES256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("token: generate key: %w", err)
		}
		priv = k
	default:
		return nil, fmt.Errorf("token: unsupported signing algorithm %q (want %s or %s)", alg, AlgEdDSA, AlgES256)
	}
	pub, err := NewPublicKey("", alg, priv.Public())
	if err != nil {
		return nil, err
	}
	return &SigningKey{ID: pub.ID, Alg: alg, Created: time.Now().UTC().Truncate(time.Second), Private: priv}, nil
}

// Public returns the key's public half.
func (k *SigningKey) Public() (*PublicKey, error) {
	return NewPublicKey(k.ID, k.Alg, k.Private.Public())
}

// KeySet is the issuer's keys: the active one signs new tokens, the others
// (previous keys not yet retired) only verify tokens that are still valid.
type KeySet struct {
	// Active is the ID of the key that signs.
	Active string
	// Keys are all keys not retired, newest first.
	Keys []*SigningKey
}

// ActiveKey returns the key that signs new tokens.
func (ks *KeySet) ActiveKey() (*SigningKey, error) {
	for _, k := range ks.Keys {
		if k.ID == ks.Active {
			return k, nil
		}
	}
	return nil, errors.New("token: key set has no active key")
}

// PublicKeys returns the public halves of every key, the JWKS content.
func (ks *KeySet) PublicKeys() ([]*PublicKey, error) {
	out := make([]*PublicKey, 0, len(ks.Keys))
	for _, k := range ks.Keys {
		p, err := k.Public()
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Rotate adds a new active key of alg and keeps at most keep previous keys
// for verification; older ones are retired (dropped, so they leave the JWKS
// and tokens they signed stop verifying). It returns the new key's ID and
// the retired IDs.
func (ks *KeySet) Rotate(alg string, keep int) (string, []string, error) {
	if keep < 0 {
		return "", nil, errors.New("token: rotate: keep must be >= 0")
	}
	k, err := GenerateKey(alg)
	if err != nil {
		return "", nil, err
	}
	keys := append([]*SigningKey{k}, ks.Keys...)
	var retired []string
	if len(keys) > keep+1 {
		for _, old := range keys[keep+1:] {
			retired = append(retired, old.ID)
		}
		keys = keys[:keep+1]
	}
	ks.Keys, ks.Active = keys, k.ID
	return k.ID, retired, nil
}

// keySetFile is the on-disk form of a KeySet.
type keySetFile struct {
	Active string       `json:"active"`
	Keys   []keyFileKey `json:"keys"`
}

type keyFileKey struct {
	ID         string    `json:"kid"`
	Alg        string    `json:"alg"`
	Created    time.Time `json:"created"`
	PrivateKey string    `json:"private_key_pem"`
}

// NewKeySet returns a key set holding one fresh active key of alg.
func NewKeySet(alg string) (*KeySet, error) {
	k, err := GenerateKey(alg)
	if err != nil {
		return nil, err
	}
	return &KeySet{Active: k.ID, Keys: []*SigningKey{k}}, nil
}

// LoadKeySet reads a key set written by Save.
func LoadKeySet(path string) (*KeySet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: read key set: %w", err)
	}
	var f keySetFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("token: parse key set %s: %w", path, err)
	}
	ks := &KeySet{Active: f.Active}
	for _, fk := range f.Keys {
		block, _ := pem.Decode([]byte(fk.PrivateKey))
		if block == nil || block.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("token: key set %s: key %s: no PKCS #8 PEM block", path, fk.ID)
		}
		parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("token: key set %s: key %s: %w", path, fk.ID, err)
		}
		signer, ok := parsed.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("token: key set %s: key %s cannot sign", path, fk.ID)
		}
		k := &SigningKey{ID: fk.ID, Alg: fk.Alg, Created: fk.Created, Private: signer}
		pub, err := k.Public()
		if err != nil {
			return nil, fmt.Errorf("token: key set %s: %w", path, err)
		}
		if want, err := Thumbprint(pub); err != nil || want != fk.ID {
			return nil, fmt.Errorf("token: key set %s: key id %s does not match its key", path, fk.ID)
		}
		ks.Keys = append(ks.Keys, k)
	}
	if _, err := ks.ActiveKey(); err != nil {
		return nil, fmt.Errorf("token: key set %s: %w", path, err)
	}
	return ks, nil
}

// Save writes the key set to path (mode 0600, atomically).
func (ks *KeySet) Save(path string) error {
	f := keySetFile{Active: ks.Active}
	for _, k := range ks.Keys {
		pemKey, err := pemfile.EncodeKey(k.Private)
		if err != nil {
			return fmt.Errorf("token: save key set: %w", err)
		}
		f.Keys = append(f.Keys, keyFileKey{ID: k.ID, Alg: k.Alg, Created: k.Created, PrivateKey: string(pemKey)})
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("token: save key set: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("token: save key set: %w", err)
	}
	return pemfile.WriteFileAtomic(path, data, 0o600)
}

// LoadOrCreateKeySet loads the key set at path, or creates one with a fresh
// key of alg when the file does not exist.
func LoadOrCreateKeySet(path, alg string) (ks *KeySet, created bool, err error) {
	ks, err = LoadKeySet(path)
	if err == nil {
		return ks, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if ks, err = NewKeySet(alg); err != nil {
		return nil, false, err
	}
	if err := ks.Save(path); err != nil {
		return nil, false, err
	}
	return ks, true, nil
}
