package policy

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/internal/poll"
)

// Loader produces the current bundle from wherever policies come from.
type Loader func(ctx context.Context) (*Bundle, error)

// DirLoader loads the policies in a directory (LoadDir).
func DirLoader(dir string) Loader {
	return func(context.Context) (*Bundle, error) { return LoadDir(dir) }
}

// BundleLoader loads an OPA bundle from a file path or, for an http(s) URL,
// with client (a Palisade mTLS client for a bundle server inside the mesh).
func BundleLoader(location string, client *http.Client) Loader {
	if !strings.HasPrefix(location, "https://") && !strings.HasPrefix(location, "http://") {
		return func(context.Context) (*Bundle, error) { return ReadBundleFile(location) }
	}
	return func(ctx context.Context) (*Bundle, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, location, nil)
		if err != nil {
			return nil, fmt.Errorf("policy: bundle request: %w", err)
		}
		res, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("policy: bundle fetch: %w", err)
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("policy: bundle fetch %s: HTTP %d", location, res.StatusCode)
		}
		return ReadBundle(res.Body, location)
	}
}

// Watch reloads the engine from load every interval until ctx is done. A
// change is tried once it has settled, reading the same on two polls in a
// row, so files being copied into a directory one by one are not compiled
// half old, half new. It is then compiled, its rego tests are run, and only
// if both succeed is it swapped in (Engine.Load). A bundle that cannot be
// loaded, compiled or tested is logged and refused; the last good policy
// keeps deciding.
func (e *Engine) Watch(ctx context.Context, load Loader, interval time.Duration) error {
	tried, seen := e.Revision(), e.Revision()
	return poll.Every(ctx, interval, func() {
		b, err := load(ctx)
		if err != nil {
			e.log.ErrorContext(ctx, "policy source unreadable; the previous policy stays in force", "error", err)
			return
		}
		rev := b.Revision()
		settled := rev == seen
		seen = rev
		if rev == tried || !settled {
			return
		}
		tried = rev // a refused revision is not retried until the source changes again
		_ = e.Load(ctx, b)
	})
}
