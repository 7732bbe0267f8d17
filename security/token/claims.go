// Package token issues and verifies Palisade's access tokens: JWTs (RFC 9068
// "at+jwt") signed with Ed25519 (EdDSA, the default) or P-256 (ES256),
// optionally bound to the client certificate they were issued to (RFC 8705
// cnf x5t#S256), and carrying act (RFC 8693) when a service acts for a user.
//
// Verification is strict: the key, found by kid in the configured key set
// only, pins the algorithm; tokens with key-location or critical headers are
// refused; exp, iss and aud are required; duplicate claims, claims of the
// wrong JSON type and non-canonical base64url are refused. Verified tokens
// are cached (keyed by a hash of the token, bounded, never past exp, cleared
// when the key set changes) so most calls skip the signature check.
package token

import (
	"github.com/golang-jwt/jwt/v5"
)

// TypeAccessToken is the typ header of Palisade access tokens (RFC 9068).
const TypeAccessToken = "at+jwt"

// Claims are the claims of a Palisade access token.
type Claims struct {
	jwt.RegisteredClaims
	Roles []string      `json:"roles,omitempty"`
	Scope string        `json:"scope,omitempty"`
	Cnf   *Confirmation `json:"cnf,omitempty"`
	Act   *Actor        `json:"act,omitempty"`
}

// Confirmation binds a token to a client certificate (RFC 8705).
type Confirmation struct {
	// X5tS256 is the base64url SHA-256 of the certificate's DER encoding.
	X5tS256 string `json:"x5t#S256"`
}

// Actor names who acts on the subject's behalf (RFC 8693).
type Actor struct {
	Sub string `json:"sub"`
}
