package conformance

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	conformancev1 "github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1"
	"github.com/palisade-rpc/palisade/security/token"
)

// The token suite's issuer, audience and the role the policy requires.
const (
	TokenIssuer   = "spiffe://palisade.local/conformance/issuer"
	TokenAudience = "spiffe://palisade.local/conformance/server"
	UserRole      = "conformance"
)

// AuthSuiteName is the name of the suite AuthSuite builds.
const AuthSuiteName = "Palisade Authentication"

// NewVerifier returns the token verifier of the conformance server: tokens
// of TokenIssuer for TokenAudience, signed by a key of the JWKS in jwksFile.
func NewVerifier(jwksFile string) (*token.Verifier, error) {
	keys, err := token.LoadJWKSFile(jwksFile)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	v, err := token.NewVerifier(TokenIssuer, TokenAudience, keys)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	return v, nil
}

// credential is one way a call may present (or not) a user token, and the
// code the chain must answer with.
type credential struct {
	name  string
	token string // "" sends no Authorization header
	want  conformancev1.Code
}

// AuthSuite builds the token suite: every stream type (unary, client,
// server, half- and full-duplex bidi) called with
//
//	good-token:     a valid token with the role        -> ok
//	missing-token:  no Authorization header           -> unauthenticated (the policy needs a user)
//	expired-token:  expired an hour and more ago      -> unauthenticated
//	tampered-token: a valid token whose claims were edited to add the role -> unauthenticated
//	forged-token:   signed by another key under the real key's kid      -> unauthenticated
//	denied-user:    a valid token without the role    -> permission_denied
//
// It mints a fresh signing key and returns the suite with the JWKS that
// verifies its tokens (for conformance-server --jwks). Valid tokens expire
// ttl after now, so the suite must be generated shortly before it runs.
func AuthSuite(now time.Time, ttl time.Duration) (*conformancev1.TestSuite, []byte, error) {
	creds, jwks, err := credentials(now, ttl)
	if err != nil {
		return nil, nil, err
	}
	suite := &conformancev1.TestSuite{
		Name:                   AuthSuiteName,
		Mode:                   conformancev1.TestSuite_TEST_MODE_SERVER,
		ReliesOnTls:            true,
		ReliesOnTlsClientCerts: true,
	}
	calls, err := authCalls()
	if err != nil {
		return nil, nil, err
	}
	for _, call := range calls {
		for _, c := range creds {
			req := proto.CloneOf(call)
			req.TestName = call.GetTestName() + "/" + c.name
			if c.token != "" {
				req.RequestHeaders = []*conformancev1.Header{{Name: "Authorization", Value: []string{"Bearer " + c.token}}}
			}
			tc := &conformancev1.TestCase{Request: req}
			if c.want != conformancev1.Code_CODE_UNSPECIFIED {
				tc.ExpectedResponse = &conformancev1.ClientResponseResult{Error: &conformancev1.Error{Code: c.want}}
			}
			suite.TestCases = append(suite.TestCases, tc)
		}
	}
	return suite, jwks, nil
}

// MarshalSuite encodes a suite for the runner's --test-file: JSON, which is
// YAML.
func MarshalSuite(s *conformancev1.TestSuite) ([]byte, error) {
	data, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("conformance: encode suite: %w", err)
	}
	return data, nil
}

// credentials mints the suite's tokens and returns them with the JWKS of the
// key that signs the genuine ones.
func credentials(now time.Time, ttl time.Duration) ([]credential, []byte, error) {
	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		return nil, nil, fmt.Errorf("conformance: %w", err)
	}
	attackerKeys, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		return nil, nil, fmt.Errorf("conformance: %w", err)
	}
	issue := func(ks *token.KeySet, at time.Time, sub string, roles ...string) (string, error) {
		return mint(ks, at, ttl, sub, roles)
	}
	good, err := issue(ks, now, "alice", UserRole)
	if err != nil {
		return nil, nil, err
	}
	denied, err := issue(ks, now, "mallory", "customer")
	if err != nil {
		return nil, nil, err
	}
	// Issued long enough ago that it expired an hour before now, far past
	// any leeway.
	expired, err := issue(ks, now.Add(-time.Hour-ttl), "alice", UserRole)
	if err != nil {
		return nil, nil, err
	}
	tampered, err := withClaim(denied, "roles", []string{UserRole})
	if err != nil {
		return nil, nil, err
	}
	attackers, err := issue(attackerKeys, now, "alice", UserRole)
	if err != nil {
		return nil, nil, err
	}
	forged, err := withHeaderOf(attackers, good)
	if err != nil {
		return nil, nil, err
	}
	pub, err := ks.PublicKeys()
	if err != nil {
		return nil, nil, fmt.Errorf("conformance: %w", err)
	}
	jwks, err := token.MarshalJWKS(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("conformance: %w", err)
	}
	unauthenticated := conformancev1.Code_CODE_UNAUTHENTICATED
	return []credential{
		{name: "good-token", token: good},
		{name: "missing-token", want: unauthenticated},
		{name: "expired-token", token: expired, want: unauthenticated},
		{name: "tampered-token", token: tampered, want: unauthenticated},
		{name: "forged-token", token: forged, want: unauthenticated},
		{name: "denied-user", token: denied, want: conformancev1.Code_CODE_PERMISSION_DENIED},
	}, jwks, nil
}

// mint signs an access token as a token.Issuer would, but issued at the
// time the suite says (at) rather than the clock's: the expired token was
// issued in the past. The claims are the issuer's, so that only the
// property each credential is about makes the server refuse it.
func mint(ks *token.KeySet, at time.Time, ttl time.Duration, sub string, roles []string) (string, error) {
	key, err := ks.ActiveKey()
	if err != nil {
		return "", fmt.Errorf("conformance: %w", err)
	}
	if key.Alg != token.AlgEdDSA {
		return "", fmt.Errorf("conformance: key %s is %s, not EdDSA", key.ID, key.Alg)
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("conformance: %w", err)
	}
	at = at.Truncate(time.Second)
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, token.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    TokenIssuer,
			Subject:   sub,
			Audience:  jwt.ClaimStrings{TokenAudience},
			ExpiresAt: jwt.NewNumericDate(at.Add(ttl)),
			NotBefore: jwt.NewNumericDate(at),
			IssuedAt:  jwt.NewNumericDate(at),
			ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Roles: roles,
	})
	t.Header["kid"] = key.ID
	t.Header["typ"] = token.TypeAccessToken
	signed, err := t.SignedString(key.Private)
	if err != nil {
		return "", fmt.Errorf("conformance: sign: %w", err)
	}
	return signed, nil
}

// withClaim returns jwt with the payload claim name set to value and the
// original signature: what an attacker who edits a token sends.
func withClaim(jwt, name string, value any) (string, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return "", errors.New("conformance: not a JWS compact token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("conformance: token payload: %w", err)
	}
	claims := map[string]any{}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", fmt.Errorf("conformance: token payload: %w", err)
	}
	claims[name] = value
	edited, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("conformance: token payload: %w", err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(edited)
	return strings.Join(parts, "."), nil
}

// withHeaderOf returns jwt with the header of genuine (its algorithm and
// the real key's kid) and jwt's own payload and signature: a token signed
// by another key that claims to be signed by the real one.
func withHeaderOf(jwt, genuine string) (string, error) {
	parts, real := strings.Split(jwt, "."), strings.Split(genuine, ".")
	if len(parts) != 3 || len(real) != 3 {
		return "", errors.New("conformance: not a JWS compact token")
	}
	parts[0] = real[0]
	return strings.Join(parts, "."), nil
}

// authCalls are the suite's calls, one per stream type, named by stream
// type; each asks for response data so that a call let through shows it.
func authCalls() ([]*conformancev1.ClientCompatRequest, error) {
	data := []byte("palisade")
	var firstErr error
	wrap := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("conformance: encode request: %w", err)
		}
		return a
	}
	unaryDef := &conformancev1.UnaryResponseDefinition{Response: &conformancev1.UnaryResponseDefinition_ResponseData{ResponseData: data}}
	streamDef := &conformancev1.StreamResponseDefinition{ResponseData: [][]byte{data, data}}
	bidi := func(fullDuplex bool) []*anypb.Any {
		return []*anypb.Any{
			wrap(&conformancev1.BidiStreamRequest{ResponseDefinition: streamDef, FullDuplex: fullDuplex}),
			wrap(&conformancev1.BidiStreamRequest{RequestData: data}),
		}
	}
	calls := []*conformancev1.ClientCompatRequest{{
		TestName:        "unary",
		StreamType:      conformancev1.StreamType_STREAM_TYPE_UNARY,
		RequestMessages: []*anypb.Any{wrap(&conformancev1.UnaryRequest{ResponseDefinition: unaryDef})},
	}, {
		TestName:   "client-stream",
		StreamType: conformancev1.StreamType_STREAM_TYPE_CLIENT_STREAM,
		RequestMessages: []*anypb.Any{
			wrap(&conformancev1.ClientStreamRequest{ResponseDefinition: unaryDef}),
			wrap(&conformancev1.ClientStreamRequest{RequestData: data}),
		},
	}, {
		TestName:        "server-stream",
		StreamType:      conformancev1.StreamType_STREAM_TYPE_SERVER_STREAM,
		RequestMessages: []*anypb.Any{wrap(&conformancev1.ServerStreamRequest{ResponseDefinition: streamDef})},
	}, {
		TestName:        "bidi-stream/half-duplex",
		StreamType:      conformancev1.StreamType_STREAM_TYPE_HALF_DUPLEX_BIDI_STREAM,
		RequestMessages: bidi(false),
	}, {
		TestName:        "bidi-stream/full-duplex",
		StreamType:      conformancev1.StreamType_STREAM_TYPE_FULL_DUPLEX_BIDI_STREAM,
		RequestMessages: bidi(true),
	}}
	return calls, firstErr
}
