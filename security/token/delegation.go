package token

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/security"
)

// ExchangeFunc trades a user's token for a delegated one (it calls the
// issuer's ExchangeToken) and returns the new token and its expiry.
type ExchangeFunc func(ctx context.Context, subjectToken string) (token string, expires time.Time, err error)

// Delegator gives a workload the token to send when it calls another
// service on behalf of the user whose call it is serving: the caller's token,
// exchanged once and cached until shortly before the exchanged token expires.
type Delegator struct {
	exchange ExchangeFunc
	margin   time.Duration
	max      int
	now      func() time.Time

	mu      sync.Mutex
	entries map[[32]byte]delegated
}

type delegated struct {
	token   string
	expires time.Time
}

// NewDelegator returns a Delegator that exchanges with exchange.
func NewDelegator(exchange ExchangeFunc, opts ...DelegatorOption) *Delegator {
	cfg := delegatorConfig{margin: 30 * time.Second, cacheSize: DefaultCacheSize, now: time.Now}
	for _, o := range opts {
		o.applyDelegator(&cfg)
	}
	return &Delegator{exchange: exchange, margin: cfg.margin, max: cfg.cacheSize, now: cfg.now, entries: map[[32]byte]delegated{}}
}

// Token returns the delegated token for the call in ctx, or "" when the call
// carries no user token (the outgoing call then goes as the workload alone).
func (d *Delegator) Token(ctx context.Context) (string, error) {
	p, ok := security.FromContext(ctx)
	if !ok || p.Token.IsZero() {
		return "", nil
	}
	subject := p.Token.Reveal()
	key := sha256.Sum256([]byte(subject))
	now := d.now()
	d.mu.Lock()
	e, ok := d.entries[key]
	d.mu.Unlock()
	if ok && now.Add(d.margin).Before(e.expires) {
		return e.token, nil
	}
	tok, exp, err := d.exchange(ctx, subject)
	if err != nil {
		return "", err
	}
	if d.max <= 0 {
		return tok, nil // the cache is off (WithCacheSize)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.entries) >= d.max {
		// Full: drop what has expired, then arbitrary entries until there is room.
		for k, old := range d.entries {
			if !now.Before(old.expires) {
				delete(d.entries, k)
			}
		}
		for k := range d.entries {
			if len(d.entries) < d.max {
				break
			}
			delete(d.entries, k)
		}
	}
	d.entries[key] = delegated{token: tok, expires: exp}
	return tok, nil
}

// Forget drops the delegated token cached for the call in ctx, so that the
// next Token exchanges anew. A service calls it when the other side refused
// the delegated token: after its own certificate rotated, a cached token is
// still bound to the old one, and is refused on any connection that
// presents the new one.
func (d *Delegator) Forget(ctx context.Context) {
	p, ok := security.FromContext(ctx)
	if !ok || p.Token.IsZero() {
		return
	}
	key := sha256.Sum256([]byte(p.Token.Reveal()))
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.entries, key)
}
