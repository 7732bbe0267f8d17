// Package header parses the two request headers the server reads before it
// trusts anything about a call: the Authorization header's bearer token and
// the client's request id. It depends on nothing but the standard library,
// so its fuzz targets (make test-fuzz) instrument and build only it rather
// than the server's whole dependency tree.
package header

import (
	"errors"
	"strings"
)

// MaxAuthorizationBytes caps the Authorization header; a longer one is
// refused before it is parsed.
const MaxAuthorizationBytes = 8 << 10

// MaxRequestIDLen is the longest request id accepted from a client.
const MaxRequestIDLen = 64

// Bearer extracts the token from the Authorization header values: exactly
// one header, scheme Bearer (any case), within MaxAuthorizationBytes,
// token68 syntax restricted to base64url and '.'. The error says which rule
// failed and never repeats the header.
func Bearer(values []string) (string, error) {
	if len(values) != 1 {
		return "", errors.New("more than one Authorization header")
	}
	v := values[0]
	if len(v) > MaxAuthorizationBytes {
		return "", errors.New("Authorization header too large")
	}
	scheme, raw, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return "", errors.New("Authorization is not a Bearer token")
	}
	for i := 0; i < len(raw); i++ {
		if !tokenChar[raw[i]] {
			return "", errors.New("bearer token has characters outside base64url and '.'")
		}
	}
	return raw, nil
}

// tokenChar marks the bytes a bearer token may hold: base64url and '.'. A
// table lookup per byte, on every call's token.
var tokenChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['-'], t['_'], t['.'] = true, true, true
	return t
}()

// ValidRequestID reports whether id is 1 to MaxRequestIDLen characters of
// [A-Za-z0-9._-], so it can be logged and echoed without escaping.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > MaxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
