// Package password hashes and verifies user passwords with argon2id
// (RFC 9106), storing each hash as a self-describing PHC string:
//
//	$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>
//
// where salt and hash are standard base64 without padding. The cost
// parameters travel with the hash, so they can be raised later without
// invalidating stored hashes: verify with the stored parameters, then call
// [NeedsRehash] after a successful login and store a fresh [Hash] if it
// reports true.
//
// Parsing of stored hashes is strict and bounded (see [Verify]): a stored
// hash that an attacker managed to write cannot make verification allocate
// gigabytes or run for minutes.
//
// For login handlers, use a [Checker]: it makes a failed login cost the same
// whether or not the user exists, so response time does not reveal which
// usernames are registered.
//
// Errors never contain the password, the salt or the hash.
package password

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// MaxPasswordLength is the longest password, in bytes, that [Hash] and
// [Verify] accept. It bounds the work an unauthenticated caller can cause.
const MaxPasswordLength = 1024

// Bounds on [Params], enforced both when hashing and when parsing a stored
// hash.
const (
	// MaxMemory is the largest memory cost, in KiB (1 GiB).
	MaxMemory = 1 << 20
	// MaxIterations is the largest number of passes over memory.
	MaxIterations = 16
	// MaxParallelism is the largest number of lanes.
	MaxParallelism = 16
	// MinSaltLength and MaxSaltLength bound the salt, in bytes.
	MinSaltLength = 8
	MaxSaltLength = 64
	// MinKeyLength and MaxKeyLength bound the hash (tag), in bytes.
	MinKeyLength = 16
	MaxKeyLength = 64
)

var (
	// ErrEmptyPassword is returned for an empty password.
	ErrEmptyPassword = errors.New("password is empty")
	// ErrPasswordTooLong is returned for a password longer than
	// [MaxPasswordLength] bytes.
	ErrPasswordTooLong = errors.New("password is too long")
	// ErrInvalidParams is returned for [Params] outside the documented bounds.
	ErrInvalidParams = errors.New("invalid argon2id parameters")
	// ErrMalformedHash is returned by [Verify] for a stored hash that is not
	// a well-formed argon2id PHC string within the bounds.
	ErrMalformedHash = errors.New("malformed password hash")
)

// Params are argon2id cost parameters.
type Params struct {
	// Memory is the memory cost in KiB, between 8×Parallelism and MaxMemory.
	Memory uint32
	// Iterations is the number of passes over memory (t), 1 to MaxIterations.
	Iterations uint32
	// Parallelism is the number of lanes (p), 1 to MaxParallelism. It is part
	// of the hash: changing it changes the output, even on one core.
	Parallelism uint8
	// SaltLength is the length of the random salt in bytes.
	SaltLength uint32
	// KeyLength is the length of the derived hash in bytes.
	KeyLength uint32
}

// DefaultParams returns RFC 9106's second recommended option (section 4,
// for memory-constrained environments) — 64 MiB of memory, 3 passes, a
// 128-bit salt and a 256-bit hash — with 1 lane instead of the RFC's 4.
// Lanes add no defence (an attacker's cost is memory × passes) and only
// spread one hash over several cores: on Palisade's 2-core servers a 2-lane
// hash kept both of Go's Ps busy for its whole duration and other calls
// waited behind it (GetUser's p99 under a login flood: 250 ms with 2 lanes,
// 100 ms with 1, under the race detector on a loaded machine). One hash
// takes about 64 MiB of memory and one core for its duration: bound
// concurrent logins accordingly. Hashes stored with other parameters (such
// as 2 lanes, before) still verify; see [NeedsRehash].
func DefaultParams() Params {
	return Params{
		Memory:      64 * 1024,
		Iterations:  3,
		Parallelism: 1,
		SaltLength:  16,
		KeyLength:   32,
	}
}

// Validate reports whether p is within the documented bounds. The error
// wraps [ErrInvalidParams].
func (p Params) Validate() error {
	switch {
	case p.Parallelism < 1 || p.Parallelism > MaxParallelism:
		return fmt.Errorf("password: parallelism %d not in [1, %d]: %w", p.Parallelism, MaxParallelism, ErrInvalidParams)
	case p.Memory < 8*uint32(p.Parallelism) || p.Memory > MaxMemory:
		return fmt.Errorf("password: memory %d KiB not in [%d, %d]: %w", p.Memory, 8*uint32(p.Parallelism), MaxMemory, ErrInvalidParams)
	case p.Iterations < 1 || p.Iterations > MaxIterations:
		return fmt.Errorf("password: iterations %d not in [1, %d]: %w", p.Iterations, MaxIterations, ErrInvalidParams)
	case p.SaltLength < MinSaltLength || p.SaltLength > MaxSaltLength:
		return fmt.Errorf("password: salt length %d not in [%d, %d]: %w", p.SaltLength, MinSaltLength, MaxSaltLength, ErrInvalidParams)
	case p.KeyLength < MinKeyLength || p.KeyLength > MaxKeyLength:
		return fmt.Errorf("password: key length %d not in [%d, %d]: %w", p.KeyLength, MinKeyLength, MaxKeyLength, ErrInvalidParams)
	}
	return nil
}

// Hash derives an argon2id hash of password with a fresh random salt and
// returns it as a PHC string that records p. It refuses an empty password,
// one longer than [MaxPasswordLength], and invalid params.
func Hash(password string, p Params) (string, error) {
	if err := checkPassword(password); err != nil {
		return "", fmt.Errorf("password: hash: %w", err)
	}
	if err := p.Validate(); err != nil {
		return "", err
	}
	salt := make([]byte, p.SaltLength)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password: reading random salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Iterations, p.Memory, p.Parallelism, p.KeyLength)
	return encode(phc{params: p, salt: salt, key: key}), nil
}

// Verify reports whether password matches encoded, a PHC string produced by
// [Hash]. A wrong password gives (false, nil).
//
// encoded is parsed strictly: the exact prefix "$argon2id$v=19$", then
// m, t and p each exactly once and in that order, in canonical decimal, then
// canonical unpadded base64 salt and hash, and nothing after. Memory must be
// between 8×p KiB and [MaxMemory], t and p between 1 and 16, the salt
// [MinSaltLength] to [MaxSaltLength] bytes and the hash [MinKeyLength] to
// [MaxKeyLength] bytes.
// Anything else returns an error wrapping [ErrMalformedHash], before any
// hashing work is done. The hash is recomputed with the stored parameters
// and compared in constant time.
func Verify(password, encoded string) (bool, error) {
	if err := checkPassword(password); err != nil {
		return false, fmt.Errorf("password: verify: %w", err)
	}
	h, err := parse(encoded)
	if err != nil {
		return false, err
	}
	return h.matches(password, argon2.IDKey), nil
}

// NeedsRehash reports whether encoded was hashed with parameters other than
// p (including salt and key length), so that it should be replaced by a
// fresh [Hash] the next time the password is known, after a successful
// login. It also reports true when encoded cannot be parsed.
func NeedsRehash(encoded string, p Params) bool {
	h, err := parse(encoded)
	return err != nil || h.params != p
}

// kdf has the signature of argon2.IDKey; Checker tests substitute a
// recording one.
type kdf func(password, salt []byte, time, memory uint32, threads uint8, keyLen uint32) []byte

// matches recomputes the hash of password with h's parameters and salt and
// compares it with h's hash in constant time.
func (h phc) matches(password string, derive kdf) bool {
	p := h.params
	key := derive([]byte(password), h.salt, p.Iterations, p.Memory, p.Parallelism, p.KeyLength)
	return subtle.ConstantTimeCompare(key, h.key) == 1
}

func checkPassword(password string) error {
	switch {
	case password == "":
		return ErrEmptyPassword
	case len(password) > MaxPasswordLength:
		return ErrPasswordTooLong
	}
	return nil
}
