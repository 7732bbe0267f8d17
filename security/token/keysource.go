package token

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnknownKey is returned by a KeySource that has no key with the asked ID.
var ErrUnknownKey = errors.New("token: unknown key id")

// KeySource supplies verification keys by ID.
type KeySource interface {
	// Key returns the key with the given ID, or an error wrapping ErrUnknownKey.
	// The ID is only ever looked up, never used as a path or URL.
	Key(ctx context.Context, kid string) (*PublicKey, error)
	// Generation changes whenever the set of keys changes; the verifier
	// clears its cache of verified tokens when it does.
	Generation() uint64
}

// keyMap is an immutable set of keys by ID.
type keyMap map[string]*PublicKey

func newKeyMap(keys []*PublicKey) keyMap {
	m := make(keyMap, len(keys))
	for _, k := range keys {
		m[k.ID] = k
	}
	return m
}

func (m keyMap) sameIDs(other keyMap) bool {
	if len(m) != len(other) {
		return false
	}
	for id := range m {
		if _, ok := other[id]; !ok {
			return false
		}
	}
	return true
}

// StaticKeys is a KeySource whose keys are set by its owner: the issuer's own
// service (which sets them from its key set on every reload) or a JWKS file.
type StaticKeys struct {
	keys atomic.Pointer[keyMap]
	gen  atomic.Uint64
}

// NewStaticKeys returns a StaticKeys holding keys.
func NewStaticKeys(keys []*PublicKey) *StaticKeys {
	s := &StaticKeys{}
	s.Set(keys)
	return s
}

// Set replaces the keys. The generation changes when the key IDs do.
func (s *StaticKeys) Set(keys []*PublicKey) {
	m := newKeyMap(keys)
	if old := s.keys.Swap(&m); old == nil || !old.sameIDs(m) {
		s.gen.Add(1)
	}
}

// Key implements KeySource.
func (s *StaticKeys) Key(_ context.Context, kid string) (*PublicKey, error) {
	if k, ok := (*s.keys.Load())[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// Generation implements KeySource.
func (s *StaticKeys) Generation() uint64 { return s.gen.Load() }

// LoadJWKSFile reads a JWKS document from a file into a StaticKeys.
func LoadJWKSFile(path string) (*StaticKeys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: read JWKS: %w", err)
	}
	keys, err := ParseJWKS(data)
	if err != nil {
		return nil, err
	}
	return NewStaticKeys(keys), nil
}

// RemoteKeys is a KeySource fetched from a JWKS URL with an HTTP client (a
// Palisade mTLS client, so the key set comes from the authenticated issuer).
// Keys are cached; an unknown kid triggers a refetch at most once per
// minimum refresh interval (WithMinRefreshInterval); a failed fetch keeps
// the last good set.
type RemoteKeys struct {
	url    string
	client *http.Client
	opts   remoteKeysConfig

	keys atomic.Pointer[keyMap]
	gen  atomic.Uint64

	mu        sync.Mutex // serializes fetches
	lastFetch time.Time
	failing   bool // the last fetch failed
}

// After a failed fetch, a lookup may refetch after retryAfterFailure rather
// than the minimum refresh interval (an issuer that was down when the
// verifier started must not leave it keyless for a whole interval); Run
// retries from runRetryAfterFailure, backing off.
const (
	retryAfterFailure    = 100 * time.Millisecond
	runRetryAfterFailure = time.Second
)

// NewRemoteKeys returns a RemoteKeys for url, fetched with client. It does
// not fetch: the first lookup (or Run) does, so a service can start before
// its issuer.
func NewRemoteKeys(url string, client *http.Client, opts ...RemoteKeysOption) *RemoteKeys {
	cfg := remoteKeysConfig{
		minRefreshInterval: 30 * time.Second,
		refreshInterval:    5 * time.Minute,
		timeout:            5 * time.Second,
		logger:             slog.Default(),
	}
	for _, o := range opts {
		o.applyRemoteKeys(&cfg)
	}
	r := &RemoteKeys{url: url, client: client, opts: cfg}
	empty := keyMap{}
	r.keys.Store(&empty)
	return r
}

// Key implements KeySource.
func (r *RemoteKeys) Key(ctx context.Context, kid string) (*PublicKey, error) {
	if k, ok := (*r.keys.Load())[kid]; ok {
		return k, nil
	}
	// Look again whether or not this lookup fetched: while it waited for
	// the lock, another fetch (Run's first, as the service starts) may have
	// brought the key, and that fetch's time keeps this one from fetching.
	r.refresh(ctx)
	if k, ok := (*r.keys.Load())[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// Generation implements KeySource.
func (r *RemoteKeys) Generation() uint64 { return r.gen.Load() }

// Refresh fetches the key set now.
func (r *RemoteKeys) Refresh(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fetchLocked(ctx)
}

// refresh fetches unless one happened within the minimum refresh interval.
func (r *RemoteKeys) refresh(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	interval := r.opts.minRefreshInterval
	if r.failing {
		interval = min(interval, retryAfterFailure)
	}
	if time.Since(r.lastFetch) < interval {
		return
	}
	_ = r.fetchLocked(ctx)
}

func (r *RemoteKeys) fetchLocked(ctx context.Context) error {
	r.lastFetch = time.Now()
	keys, err := r.fetch(ctx)
	r.failing = err != nil
	if err != nil {
		r.opts.logger.WarnContext(ctx, "JWKS fetch failed; keeping the last good key set", "url", r.url, "error", err)
		return err
	}
	m := newKeyMap(keys)
	if old := r.keys.Swap(&m); !old.sameIDs(m) {
		r.gen.Add(1)
		ids := make([]string, 0, len(m))
		for id := range m {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		r.opts.logger.InfoContext(ctx, "JWKS key set changed", "url", r.url, "kids", ids)
	}
	return nil
}

func (r *RemoteKeys) fetch(ctx context.Context) ([]*PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return nil, fmt.Errorf("token: JWKS request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	res, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("token: JWKS fetch: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("token: JWKS fetch: HTTP %d", res.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("token: JWKS read: %w", err)
	}
	return ParseJWKS(body)
}

// Run fetches the key set now and then every refresh interval
// (WithRefreshInterval) until ctx is done; after a failed fetch it retries
// sooner, backing off from one second.
func (r *RemoteKeys) Run(ctx context.Context) error {
	backoff := runRetryAfterFailure
	for {
		wait := r.opts.refreshInterval
		if err := r.Refresh(ctx); err != nil {
			wait = min(backoff, r.opts.refreshInterval)
			backoff *= 2
		} else {
			backoff = runRetryAfterFailure
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
