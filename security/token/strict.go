package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxJSONDepth bounds nesting in a token header, payload or JWKS.
const maxJSONDepth = 8

// strictB64 decodes base64url without padding and refuses non-canonical
// encodings (non-zero padding bits), so one token has one spelling.
var strictB64 = base64.RawURLEncoding.Strict()

// checkJSON reports whether data is exactly one JSON object in which no
// object, at any depth, repeats a member name. encoding/json would silently
// keep the last of two "exp" members; a verifier and a policy that read
// different ones are how tokens get confused.
func checkJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	if err := checkObject(dec, 1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// checkObject consumes the members of an object whose '{' was read.
func checkObject(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deep")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("malformed JSON: %w", err)
		}
		name, ok := tok.(string)
		if !ok {
			return errors.New("malformed JSON object")
		}
		if seen[name] {
			return fmt.Errorf("duplicate member %q", name)
		}
		seen[name] = true
		if err := checkValue(dec, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

func checkValue(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return checkObject(dec, depth+1)
	case '[':
		if depth+1 > maxJSONDepth {
			return errors.New("JSON nested too deep")
		}
		for dec.More() {
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return err
	}
	return errors.New("malformed JSON")
}

// header is a token's JOSE header. Palisade accepts alg, kid and typ only.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// refusedHeaders name a key or a key location outside the verifier's key set,
// or extensions it would have to understand; a token carrying any of them is
// refused outright rather than having them ignored.
var refusedHeaders = []string{"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip", "enc"}

// parseHeader checks a token's header segment: canonical base64url, one JSON
// object without duplicates, only alg, kid and typ, kid present and short,
// typ "at+jwt" (RFC 9068).
func parseHeader(seg string) (header, error) {
	raw, err := strictB64.DecodeString(seg)
	if err != nil {
		return header{}, fail(ReasonMalformed, "header is not canonical base64url")
	}
	if err := checkJSON(raw); err != nil {
		return header{}, fail(ReasonMalformed, "header: "+err.Error())
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return header{}, fail(ReasonMalformed, "header: "+err.Error())
	}
	for _, name := range refusedHeaders {
		if _, ok := members[name]; ok {
			return header{}, fail(ReasonHeader, "header parameter "+name+" is refused")
		}
	}
	for name := range members {
		if name != "alg" && name != "kid" && name != "typ" {
			return header{}, fail(ReasonHeader, fmt.Sprintf("unknown header parameter %q", name))
		}
	}
	var h header
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&h); err != nil {
		return header{}, fail(ReasonMalformed, "header: "+err.Error())
	}
	switch {
	case h.Alg == "":
		return header{}, fail(ReasonAlgorithm, "alg missing")
	case strings.EqualFold(h.Alg, "none") || strings.HasPrefix(strings.ToUpper(h.Alg), "HS"):
		return header{}, fail(ReasonAlgorithm, "alg "+h.Alg+" is refused")
	case h.Kid == "":
		return header{}, fail(ReasonHeader, "kid missing")
	case len(h.Kid) > 128:
		return header{}, fail(ReasonHeader, "kid too long")
	case !strings.EqualFold(h.Typ, "at+jwt") && !strings.EqualFold(h.Typ, "application/at+jwt"):
		return header{}, fail(ReasonHeader, fmt.Sprintf("typ %q is not at+jwt", h.Typ))
	}
	return h, nil
}

// checkPayload checks a token's payload segment before golang-jwt decodes it:
// canonical base64url, one JSON object without duplicates at any depth, and
// the JSON type of every claim Palisade reads (encoding/json would otherwise
// accept "exp": "1700000000" as a number).
func checkPayload(seg string) error {
	raw, err := strictB64.DecodeString(seg)
	if err != nil {
		return fail(ReasonMalformed, "payload is not canonical base64url")
	}
	if err := checkJSON(raw); err != nil {
		return fail(ReasonMalformed, "payload: "+err.Error())
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(raw, &claims); err != nil {
		return fail(ReasonMalformed, "payload: "+err.Error())
	}
	for name, value := range claims {
		var ok bool
		switch name {
		case "exp", "nbf", "iat":
			ok = isNumber(value)
		case "iss", "sub", "jti", "scope":
			ok = isString(value)
		case "aud":
			ok = isString(value) || isStringArray(value)
		case "roles":
			ok = isStringArray(value)
		case "cnf":
			var c map[string]json.RawMessage
			ok = json.Unmarshal(value, &c) == nil && c != nil && isString(c["x5t#S256"]) && len(c) == 1
		case "act":
			var a map[string]json.RawMessage
			ok = json.Unmarshal(value, &a) == nil && a != nil && isString(a["sub"])
		default:
			ok = true
		}
		if !ok {
			return fail(ReasonMalformed, fmt.Sprintf("claim %q has the wrong type", name))
		}
	}
	for name, reason := range map[string]string{"exp": ReasonClaims, "sub": ReasonClaims, "iss": ReasonIssuer, "aud": ReasonAudience} {
		if _, ok := claims[name]; !ok {
			return fail(reason, name+" missing")
		}
	}
	return nil
}

func isNumber(v json.RawMessage) bool {
	return len(v) > 0 && (v[0] == '-' || ('0' <= v[0] && v[0] <= '9'))
}

func isString(v json.RawMessage) bool {
	var s string
	return len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil
}

func isStringArray(v json.RawMessage) bool {
	var a []string
	return len(v) > 0 && v[0] == '[' && json.Unmarshal(v, &a) == nil
}
