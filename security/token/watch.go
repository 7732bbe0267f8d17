package token

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"

	"github.com/palisade-rpc/palisade/internal/poll"
)

// WatchKeySet polls the key set file at path every interval and calls apply
// with the new set whenever its content changes and it loads cleanly. A file
// that fails to load is logged and ignored: the last good set stays in force.
// It returns when ctx is done.
func WatchKeySet(ctx context.Context, path string, interval time.Duration, logger *slog.Logger, apply func(*KeySet)) error {
	last := fileDigest(path)
	return poll.Every(ctx, interval, func() {
		d := fileDigest(path)
		if d == last {
			return
		}
		last = d
		ks, err := LoadKeySet(path)
		if err != nil {
			logger.ErrorContext(ctx, "signing key set changed but does not load; keeping the previous one", "path", path, "error", err)
			return
		}
		logger.InfoContext(ctx, "signing key set reloaded", "path", path, "active", ks.Active, "keys", len(ks.Keys))
		apply(ks)
	})
}

func fileDigest(path string) [32]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(data)
}
