package token

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"

	"github.com/palisade-rpc/palisade/security"
)

// Defaults of the Verifier's options.
const (
	DefaultLeeway       = 30 * time.Second
	DefaultCacheSize    = 10000
	DefaultMaxTokenSize = 8 << 10
)

// Verifier verifies access tokens. It is safe for concurrent use.
type Verifier struct {
	opts   verifierConfig
	parser *jwt.Parser
	cache  *cache
	// hits and misses count Verify's cache lookups, for metrics.
	hits, misses atomic.Uint64
}

// CacheStats returns how many Verify calls found the token in the cache of
// verified tokens (hits) and how many had to verify it (misses), since the
// Verifier was made. With the cache disabled every call is a miss.
func (v *Verifier) CacheStats() (hits, misses uint64) {
	return v.hits.Load(), v.misses.Load()
}

// NewVerifier returns a Verifier of the access tokens issuer signs for
// audience (this service's name: a token's aud must contain it), with the
// keys of keys.
func NewVerifier(issuer, audience string, keys KeySource, opts ...VerifierOption) (*Verifier, error) {
	if issuer == "" || audience == "" || keys == nil {
		return nil, errors.New("token: verifier needs an issuer, an audience and a key source")
	}
	cfg := verifierConfig{
		issuer: issuer, audience: audience, keys: keys,
		leeway: DefaultLeeway, cacheSize: DefaultCacheSize, maxTokenSize: DefaultMaxTokenSize, now: time.Now,
	}
	for _, o := range opts {
		o.applyVerifier(&cfg)
	}
	v := &Verifier{opts: cfg, cache: newCache(cfg.cacheSize)}
	v.parser = v.newParser(cfg.audience)
	return v, nil
}

func (v *Verifier) newParser(audience string) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods([]string{AlgEdDSA, AlgES256}),
		jwt.WithStrictDecoding(),
		jwt.WithIssuer(v.opts.issuer),
		jwt.WithAudience(audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(v.opts.leeway),
		jwt.WithTimeFunc(v.opts.now),
	)
}

// VerifySubjectToken verifies a user's token that a workload received and now
// presents to exchange it (RFC 8693): fully, except that it is not checked
// against the presenter's certificate — the token was bound to the user's
// client, and the workload checked that binding when the user called it.
// audience is the presenting workload's name: the token must have been
// issued for it. A token that is itself delegated (has act) is refused, so
// delegation does not chain. The cache is not used.
func (v *Verifier) VerifySubjectToken(ctx context.Context, raw, audience string) (*security.User, error) {
	if len(raw) > v.opts.maxTokenSize {
		return nil, fail(ReasonTooLarge, fmt.Sprintf("token longer than %d bytes", v.opts.maxTokenSize))
	}
	e, err := v.verify(ctx, raw, v.newParser(audience))
	if err != nil {
		return nil, err
	}
	if e.actor != "" {
		return nil, fail(ReasonActor, "a delegated token cannot be exchanged again")
	}
	return e.user, nil
}

// Verify checks raw, presented by workload, and returns the user it proves.
// A token bound to a certificate (cnf) must be presented over a connection
// with that client certificate; a token with act must be presented by the
// workload it names. Errors are *Error values that never include the token.
func (v *Verifier) Verify(ctx context.Context, raw string, workload security.Workload) (*security.User, error) {
	if len(raw) > v.opts.maxTokenSize {
		return nil, fail(ReasonTooLarge, fmt.Sprintf("token longer than %d bytes", v.opts.maxTokenSize))
	}
	now := v.opts.now()
	gen := v.opts.keys.Generation()
	// Hash the string's bytes in place: converting to []byte would copy the
	// whole token on every call, and Sum256 only reads.
	key := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	e, ok := v.cache.get(key, gen, now)
	if ok {
		v.hits.Add(1)
	} else {
		v.misses.Add(1)
		var err error
		if e, err = v.verify(ctx, raw, v.parser); err != nil {
			return nil, err
		}
		v.cache.put(key, gen, e)
	}
	if e.bound && subtle.ConstantTimeCompare(e.cnf[:], workload.CertSHA256[:]) != 1 {
		return nil, fail(ReasonBinding, "token is bound to another client certificate")
	}
	if e.actor != "" && e.actor != workload.ID.String() {
		return nil, fail(ReasonActor, "token's actor "+e.actor+" is not the presenting workload "+workload.ID.String())
	}
	return e.user, nil
}

// verify does the full check of a token not in the cache.
func (v *Verifier) verify(ctx context.Context, raw string, parser *jwt.Parser) (*cacheEntry, error) {
	segs := strings.Split(raw, ".")
	if len(segs) != 3 || segs[0] == "" || segs[1] == "" || segs[2] == "" {
		return nil, fail(ReasonMalformed, "not a compact JWS of three segments")
	}
	h, err := parseHeader(segs[0])
	if err != nil {
		return nil, err
	}
	if err := checkPayload(segs[1]); err != nil {
		return nil, err
	}
	if _, err := strictB64.DecodeString(segs[2]); err != nil {
		return nil, fail(ReasonMalformed, "signature is not canonical base64url")
	}
	pub, err := v.opts.keys.Key(ctx, h.Kid)
	if err != nil {
		return nil, fail(ReasonUnknownKey, "kid not in the key set")
	}
	if h.Alg != pub.Alg {
		return nil, fail(ReasonAlgorithm, fmt.Sprintf("alg %s is not the key's %s", h.Alg, pub.Alg))
	}
	var claims Claims
	_, err = parser.ParseWithClaims(raw, &claims, func(t *jwt.Token) (any, error) {
		if t.Method.Alg() != pub.Alg {
			return nil, errors.New("algorithm mismatch")
		}
		return pub.Key, nil
	})
	if err != nil {
		return nil, classify(err)
	}
	if claims.Subject == "" {
		return nil, fail(ReasonClaims, "sub missing")
	}
	e := &cacheEntry{expires: claims.ExpiresAt.Time}
	user := &security.User{
		Subject:   claims.Subject,
		Roles:     claims.Roles,
		Scope:     claims.Scope,
		Issuer:    claims.Issuer,
		Audience:  claims.Audience,
		TokenID:   claims.ID,
		ExpiresAt: claims.ExpiresAt.Time,
	}
	if claims.IssuedAt != nil {
		user.IssuedAt = claims.IssuedAt.Time
	}
	if claims.Cnf != nil {
		thumb, err := strictB64.DecodeString(claims.Cnf.X5tS256)
		if err != nil || len(thumb) != sha256.Size {
			return nil, fail(ReasonClaims, "cnf x5t#S256 is not a base64url SHA-256")
		}
		copy(e.cnf[:], thumb)
		e.bound = true
		user.CertBound = true
	}
	if claims.Act != nil {
		if claims.Act.Sub == "" {
			return nil, fail(ReasonClaims, "act without sub")
		}
		if claims.Cnf == nil {
			// A delegated token that is not bound could be replayed by anyone
			// who reads it; Palisade only issues bound ones.
			return nil, fail(ReasonClaims, "delegated token is not certificate-bound")
		}
		e.actor = claims.Act.Sub
		user.Actor = claims.Act.Sub
	}
	e.user = user
	return e, nil
}

// classify maps golang-jwt's errors to reasons.
func classify(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return fail(ReasonExpired, "token has expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return fail(ReasonNotYet, "token is not valid yet")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return fail(ReasonIssuer, "wrong issuer")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return fail(ReasonAudience, "audience does not name this service")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fail(ReasonClaims, "required claim missing")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fail(ReasonSignature, "signature does not verify")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return fail(ReasonAlgorithm, "token cannot be verified with the key")
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fail(ReasonMalformed, "malformed token")
	}
	return fail(ReasonClaims, "invalid token")
}

// Thumbprint256 returns the cnf x5t#S256 value of a certificate's SHA-256.
func Thumbprint256(certSHA256 [32]byte) string {
	return base64.RawURLEncoding.EncodeToString(certSHA256[:])
}
