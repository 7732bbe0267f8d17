package password

import (
	"errors"
	"testing"

	"golang.org/x/crypto/argon2"
)

// FuzzVerify fuzzes the parser of stored hashes, which may come from a
// compromised or corrupted database. Verify must never panic, must refuse
// anything that does not parse with ErrMalformedHash, and every encoding
// that parses must be canonical: encode(parse(s)) == s.
func FuzzVerify(f *testing.F) {
	const pw = "correct horse battery staple"
	for _, seed := range []string{
		"$argon2id$v=19$m=64,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$aOoVeWE42LVTgGoaznuFD3tlTQBfNpDN/329t0Qcsro",
		"$argon2id$v=19$m=256,t=2,p=2$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=65536,t=3,p=2$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$argon2id$v=19$m=1048577,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=64,t=0,p=1$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=64,t=1,p=256$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=16$m=64,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2i$v=19$m=64,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=064,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=64,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ==$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=64,t=1,p=1$cGFsaXNhZGVz\nYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$m=64,t=1,p=1$cGFsaXNh$jxyMpXkIMXTcYjy+wW/9Rw$",
		"$argon2id$v=19$t=1,m=64,p=1$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
		"$argon2id$v=19$",
		"",
	} {
		f.Add(pw, seed)
	}
	f.Fuzz(func(t *testing.T, password, encoded string) {
		h, err := parse(encoded)
		if err != nil {
			if !errors.Is(err, ErrMalformedHash) {
				t.Fatalf("parse error %v does not wrap ErrMalformedHash", err)
			}
			if ok, err := Verify(password, encoded); ok || err == nil {
				t.Fatalf("Verify of unparsable hash = %v, %v; want false and an error", ok, err)
			}
			return
		}
		if got := encode(h); got != encoded {
			t.Fatalf("encode(parse(%q)) = %q", encoded, got)
		}
		if NeedsRehash(encoded, h.params) {
			t.Fatalf("NeedsRehash(%q, its own params) = true", encoded)
		}
		// Parsing bounds the cost, but a 1 GiB hash per input would still
		// stall the fuzzer: only run the KDF for cheap parameters.
		if uint64(h.params.Memory)*uint64(h.params.Iterations) <= 1024 {
			ok, err := Verify(password, encoded)
			if err == nil && ok != h.matches(password, argon2.IDKey) {
				t.Fatalf("Verify disagrees with a recomputation")
			}
			if err != nil && checkPassword(password) == nil {
				t.Fatalf("Verify of a parsable hash: %v", err)
			}
		}
	})
}
