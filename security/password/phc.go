package password

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// prefix is the only algorithm and version accepted: argon2id, version 0x13.
const prefix = "$argon2id$v=19$"

// maxEncodedLength bounds a stored hash before it is parsed. The longest
// valid encoding (7-digit m, 2-digit t and p, 64-byte salt and hash) is 208
// bytes.
const maxEncodedLength = 256

// b64 is standard base64 without padding, rejecting non-zero trailing bits.
// It still skips CR and LF, so decodeB64 also checks that the input is the
// canonical encoding of its result.
var b64 = base64.RawStdEncoding.Strict()

// phc is a parsed argon2id PHC string.
type phc struct {
	params Params
	salt   []byte
	key    []byte
}

// encode formats h as a PHC string. The inverse of parse.
func encode(h phc) string {
	p := h.params
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Iterations, p.Parallelism,
		b64.EncodeToString(h.salt), b64.EncodeToString(h.key))
}

// parse parses a PHC string strictly (see Verify). Every error wraps
// ErrMalformedHash and, since encoded is a secret, quotes no part of it. A
// string that parses is the canonical encoding of its result:
// encode(parse(s)) == s.
func parse(encoded string) (phc, error) {
	if len(encoded) > maxEncodedLength {
		return phc{}, malformed("longer than %d bytes", maxEncodedLength)
	}
	rest, ok := strings.CutPrefix(encoded, prefix)
	if !ok {
		return phc{}, malformed("not an argon2id version 19 hash")
	}
	fields := strings.Split(rest, "$")
	if len(fields) != 3 {
		return phc{}, malformed("want parameters, salt and hash separated by '$'")
	}
	params := strings.Split(fields[0], ",")
	if len(params) != 3 {
		return phc{}, malformed("want exactly the parameters m, t and p")
	}
	m, err := parseParam(params[0], "m=", MaxMemory)
	if err != nil {
		return phc{}, err
	}
	t, err := parseParam(params[1], "t=", MaxIterations)
	if err != nil {
		return phc{}, err
	}
	par, err := parseParam(params[2], "p=", MaxParallelism)
	if err != nil {
		return phc{}, err
	}
	salt, err := decodeB64(fields[1], "salt")
	if err != nil {
		return phc{}, err
	}
	key, err := decodeB64(fields[2], "hash")
	if err != nil {
		return phc{}, err
	}
	h := phc{
		params: Params{
			Memory:      m,
			Iterations:  t,
			Parallelism: uint8(par), // par <= MaxParallelism
			SaltLength:  uint32(len(salt)),
			KeyLength:   uint32(len(key)),
		},
		salt: salt,
		key:  key,
	}
	if err := h.params.Validate(); err != nil {
		return phc{}, malformed("parameters out of bounds")
	}
	return h, nil
}

// parseParam parses "<name><decimal>" with no sign, no leading zero and a
// value of at most max.
func parseParam(s, name string, max uint64) (uint32, error) {
	digits, ok := strings.CutPrefix(s, name)
	if !ok {
		return 0, malformed("want parameter %q", name)
	}
	if digits == "" || len(digits) > 10 || (digits[0] == '0' && len(digits) > 1) {
		return 0, malformed("parameter %q is not a canonical number", name)
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, malformed("parameter %q is not a canonical number", name)
		}
	}
	v, err := strconv.ParseUint(digits, 10, 32)
	if err != nil || v > max {
		return 0, malformed("parameter %q out of bounds", name)
	}
	return uint32(v), nil
}

func decodeB64(s, what string) ([]byte, error) {
	b, err := b64.DecodeString(s)
	if err != nil || b64.EncodeToString(b) != s {
		// err may quote the offending input, so it is not wrapped.
		return nil, malformed("%s is not canonical unpadded base64", what)
	}
	return b, nil
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("password: %s: %w", fmt.Sprintf(format, args...), ErrMalformedHash)
}
