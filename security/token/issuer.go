package token

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Defaults of the Issuer's options, and the longest lifetime of a
// delegated token.
const (
	DefaultTTL        = 15 * time.Minute
	MaxDelegatedTTL   = 5 * time.Minute
	DefaultSigningAlg = AlgEdDSA
)

// Issuer signs access tokens with the active key of its key set.
type Issuer struct {
	opts issuerConfig
	keys atomic.Pointer[KeySet]
}

// NewIssuer returns an Issuer signing with ks, whose tokens carry issuer
// as their iss.
func NewIssuer(ks *KeySet, issuer string, opts ...IssuerOption) (*Issuer, error) {
	if issuer == "" {
		return nil, errors.New("token: issuer needs an issuer name")
	}
	cfg := issuerConfig{issuer: issuer, ttl: DefaultTTL, now: time.Now}
	for _, o := range opts {
		o.applyIssuer(&cfg)
	}
	i := &Issuer{opts: cfg}
	if err := i.SetKeys(ks); err != nil {
		return nil, err
	}
	return i, nil
}

// SetKeys replaces the key set (after a rotation).
func (i *Issuer) SetKeys(ks *KeySet) error {
	if _, err := ks.ActiveKey(); err != nil {
		return err
	}
	i.keys.Store(ks)
	return nil
}

// Keys returns the current key set.
func (i *Issuer) Keys() *KeySet { return i.keys.Load() }

// TTL returns the default lifetime of access tokens.
func (i *Issuer) TTL() time.Duration { return i.opts.ttl }

// Name returns the issuer name (iss).
func (i *Issuer) Name() string { return i.opts.issuer }

// Grant describes a token to issue.
type Grant struct {
	Subject string
	Roles   []string
	Scope   string
	// Audience defaults to the issuer's (WithAudience).
	Audience []string
	// TTL defaults to the issuer's.
	TTL time.Duration
	// CertSHA256 binds the token to a client certificate (cnf x5t#S256) when set.
	CertSHA256 *[32]byte
	// Actor is set for a delegated token: the SPIFFE ID acting for Subject.
	Actor string
}

// Issue signs a token for g and returns it with its expiry.
func (i *Issuer) Issue(g Grant) (string, time.Time, error) {
	if g.Subject == "" {
		return "", time.Time{}, errors.New("token: issue: no subject")
	}
	ks := i.keys.Load()
	key, err := ks.ActiveKey()
	if err != nil {
		return "", time.Time{}, err
	}
	ttl := g.TTL
	if ttl <= 0 {
		ttl = i.opts.ttl
	}
	aud := g.Audience
	if len(aud) == 0 {
		aud = i.opts.audience
	}
	if len(aud) == 0 {
		return "", time.Time{}, errors.New("token: issue: no audience (the grant names none, and the issuer has no WithAudience)")
	}
	var jti [16]byte
	_, _ = rand.Read(jti[:]) // crypto/rand.Read never fails
	now := i.opts.now().Truncate(time.Second)
	exp := now.Add(ttl)
	claims := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    i.opts.issuer,
			Subject:   g.Subject,
			Audience:  aud,
			ExpiresAt: jwt.NewNumericDate(exp),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Roles: g.Roles,
		Scope: g.Scope,
	}
	if g.CertSHA256 != nil {
		claims.Cnf = &Confirmation{X5tS256: Thumbprint256(*g.CertSHA256)}
	}
	if g.Actor != "" {
		claims.Act = &Actor{Sub: g.Actor}
	}
	var method jwt.SigningMethod
	switch key.Alg {
	case AlgEdDSA:
		method = jwt.SigningMethodEdDSA
	case AlgES256:
		method = jwt.SigningMethodES256
	default:
		return "", time.Time{}, fmt.Errorf("token: key %s has unsupported algorithm %q", key.ID, key.Alg)
	}
	t := jwt.NewWithClaims(method, claims)
	t.Header["kid"] = key.ID
	t.Header["typ"] = TypeAccessToken
	signed, err := t.SignedString(key.Private)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token: sign: %w", err)
	}
	return signed, exp, nil
}
