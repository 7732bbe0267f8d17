package token

import (
	"crypto/ed25519"
	"time"
)

func ed25519PublicKey(b []byte) ed25519.PublicKey { return ed25519.PublicKey(b) }

// clockOption sets the clock of a Verifier, an Issuer or a Delegator: the
// package's tests step time instead of sleeping.
type clockOption func() time.Time

func (o clockOption) applyVerifier(c *verifierConfig)   { c.now = o }
func (o clockOption) applyIssuer(c *issuerConfig)       { c.now = o }
func (o clockOption) applyDelegator(c *delegatorConfig) { c.now = o }

func withClock(now func() time.Time) clockOption { return clockOption(now) }
