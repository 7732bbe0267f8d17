package token

import (
	"context"
	"crypto/sha256"
	"os"
	"time"

	"github.com/palisade-rpc/palisade/internal/poll"
)

// WatchKeySet polls the key set file at path every interval and, whenever
// its content changes, loads it and calls apply: with the new set when it
// loads cleanly, and with the error (and a nil set) when it does not — the
// caller then keeps the set in force, and says so in its log. It returns
// when ctx is done.
func WatchKeySet(ctx context.Context, path string, interval time.Duration, apply func(*KeySet, error)) error {
	last := fileDigest(path)
	return poll.Every(ctx, interval, func() {
		d := fileDigest(path)
		if d == last {
			return
		}
		last = d
		ks, err := LoadKeySet(path)
		if err != nil {
			apply(nil, err)
			return
		}
		apply(ks, nil)
	})
}

func fileDigest(path string) [32]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(data)
}
