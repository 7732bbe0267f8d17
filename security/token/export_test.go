package token

import "crypto/ed25519"

func ed25519PublicKey(b []byte) ed25519.PublicKey { return ed25519.PublicKey(b) }
