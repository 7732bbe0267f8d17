// Package security holds Palisade's identity model: the Principal that the
// authentication middleware puts in every request's context, made of the
// calling workload (proven by its mTLS certificate) and, when a valid token
// came with the call, the user.
//
// Handlers and policies read identity from the Principal, never from raw
// headers or certificates.
package security

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Principal is who is making a call. It is shared by the whole call and must
// not be modified.
type Principal struct {
	// Workload is the calling workload, from its verified client certificate.
	Workload Workload
	// User is the user the call is made for, from a verified bearer token; nil
	// when no token came with the call.
	User *User
	// Token is the bearer token User was verified from, for a service that
	// must exchange it to call another on the user's behalf. It never prints.
	Token Secret
}

// User is a user identity proven by a verified access token.
type User struct {
	// Subject is the token's sub: the user id.
	Subject string
	// Roles and Scope are what the issuer granted.
	Roles []string
	Scope string
	// Issuer and Audience are the token's iss and aud.
	Issuer   string
	Audience []string
	// TokenID is the token's jti.
	TokenID string
	// IssuedAt and ExpiresAt are the token's iat and exp.
	IssuedAt, ExpiresAt time.Time
	// Actor is the SPIFFE ID of the workload acting on the user's behalf (the
	// token's act.sub, RFC 8693), empty for a token the user holds directly.
	Actor string
	// CertBound is true when the token was bound to a client certificate
	// (cnf x5t#S256, RFC 8705) and that certificate is the connection's.
	CertBound bool
}

// HasRole reports whether the user has role.
func (u *User) HasRole(role string) bool {
	return u != nil && slices.Contains(u.Roles, role)
}

// Workload is a workload identity proven by an mTLS client certificate.
type Workload struct {
	// ID is the SPIFFE ID in the certificate's URI SAN.
	ID spiffeid.ID
	// CertSHA256 is the SHA-256 of the leaf certificate's DER encoding.
	CertSHA256 [32]byte
	// Certificate is the verified leaf certificate.
	Certificate *x509.Certificate
}

// CertSHA256Hex returns CertSHA256 as lower-case hex, the form the policy sees.
func (w Workload) CertSHA256Hex() string { return hex.EncodeToString(w.CertSHA256[:]) }

// WorkloadFromChains returns the workload identity of a peer whose
// certificate chains were verified by crypto/tls (tls.ConnectionState's
// VerifiedChains). The leaf must carry exactly one SPIFFE ID, and it must be
// in trustDomain.
func WorkloadFromChains(verifiedChains [][]*x509.Certificate, trustDomain string) (Workload, error) {
	if len(verifiedChains) == 0 || len(verifiedChains[0]) == 0 {
		return Workload{}, errors.New("no verified client certificate")
	}
	leaf := verifiedChains[0][0]
	id, err := spiffeid.FromCertificate(leaf)
	if err != nil {
		return Workload{}, fmt.Errorf("client certificate: %w", err)
	}
	if !id.MemberOf(trustDomain) {
		return Workload{}, fmt.Errorf("client certificate: %s is not in trust domain %s", id, trustDomain)
	}
	return Workload{ID: id, CertSHA256: sha256.Sum256(leaf.Raw), Certificate: leaf}, nil
}

type principalKey struct{}

// NewContext returns a copy of ctx carrying p.
func NewContext(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the Principal in ctx, if any. Every call that reached a
// Palisade handler has one.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok && p != nil
}

// CallerID returns the SPIFFE ID of the workload calling in ctx, or "" when
// ctx carries no Principal (outside a Palisade server).
func CallerID(ctx context.Context) string {
	if p, ok := FromContext(ctx); ok {
		return p.Workload.ID.String()
	}
	return ""
}
