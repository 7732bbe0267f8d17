package token

import "errors"

// Reasons a token is refused. They go to logs and metrics, never to the
// caller, who only learns that the token is invalid.
const (
	ReasonMalformed  = "malformed"     // not a well-formed compact JWS with the claim types Palisade reads
	ReasonHeader     = "header"        // a refused, unknown or missing header parameter, or the wrong typ
	ReasonAlgorithm  = "algorithm"     // alg missing, none, HMAC, or not the algorithm of the key
	ReasonUnknownKey = "unknown_key"   // kid not in the key set
	ReasonSignature  = "signature"     // signature does not verify
	ReasonExpired    = "expired"       // exp has passed
	ReasonNotYet     = "not_yet_valid" // nbf in the future, or iat in the future beyond the leeway
	ReasonClaims     = "claims"        // exp missing, or another required claim missing or invalid
	ReasonIssuer     = "issuer"        // iss is not the trusted issuer
	ReasonAudience   = "audience"      // aud does not name this service
	ReasonBinding    = "binding"       // cnf does not match the client certificate of the connection
	ReasonActor      = "actor"         // act.sub is not the workload presenting the token
	ReasonTooLarge   = "too_large"     // the token is larger than the verifier accepts
)

// Error is a refused token: a Reason for metrics and a Detail for the log.
// Neither holds the token.
type Error struct {
	Reason string
	Detail string
}

func (e *Error) Error() string { return "token: " + e.Reason + ": " + e.Detail }

func fail(reason, detail string) *Error { return &Error{Reason: reason, Detail: detail} }

// ReasonOf returns the Reason of a verification error, or "" if err is not one.
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}
