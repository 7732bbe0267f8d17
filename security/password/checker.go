package password

import (
	"crypto/rand"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// Checker verifies login attempts so that a failed login costs the same
// whether or not the user exists. A login handler that returned early for an
// unknown username would answer in microseconds instead of the tens of
// milliseconds an argon2id verification takes, telling an attacker which
// usernames are registered. Checker closes that channel by verifying an
// unknown user's password against a dummy hash made with the same
// parameters as real ones.
//
// Use the same [Params] for [NewChecker] as for [Hash], and rehash stored
// hashes made with other parameters (see [NeedsRehash]): a stored hash with
// different parameters costs a different time to verify.
//
// A Checker is immutable and safe for concurrent use.
type Checker struct {
	dummy  phc
	derive kdf
}

// NewChecker returns a Checker whose dummy hash is the hash of a random
// password, made with p.
func NewChecker(p Params) (*Checker, error) {
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("password: reading random dummy password: %w", err)
	}
	// Hex keeps the dummy password valid for Hash whatever the random bytes.
	encoded, err := Hash(fmt.Sprintf("%x", secret), p)
	if err != nil {
		return nil, fmt.Errorf("password: making dummy hash: %w", err)
	}
	dummy, err := parse(encoded)
	if err != nil {
		return nil, fmt.Errorf("password: parsing dummy hash: %w", err)
	}
	return &Checker{dummy: dummy, derive: argon2.IDKey}, nil
}

// Params returns the parameters of the dummy hash: the cost of checking an
// unknown user's password, and of a stored hash made with the same
// parameters. A nil or zero Checker returns zero Params.
func (c *Checker) Params() Params {
	if c == nil {
		return Params{}
	}
	return c.dummy.params
}

// Check reports whether password matches encoded, the stored hash of the
// user who is logging in. Pass "" as encoded when the user does not exist:
// Check then verifies password against the dummy hash, doing the same work
// as for a real user, and returns false. A malformed encoded is treated the
// same way. Check never returns true for a password that [Hash] would refuse
// (empty or longer than [MaxPasswordLength]) and does no hashing work for
// one; that early return depends only on the password, not on the user.
// A nil or zero Checker, which has no dummy hash, always returns false.
func (c *Checker) Check(password, encoded string) bool {
	if c == nil || c.derive == nil || checkPassword(password) != nil {
		return false
	}
	h, err := parse(encoded)
	if err != nil {
		c.dummy.matches(password, c.derive)
		return false
	}
	return h.matches(password, c.derive)
}
