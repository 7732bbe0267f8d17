package token

import (
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/security"
)

// cacheEntry is a verified token: the user it proves and what must still be
// checked per call (expiry, and the certificate it is bound to).
type cacheEntry struct {
	user    *security.User
	expires time.Time
	// cnf is the SHA-256 of the certificate the token is bound to; bound is
	// false for an unbound token.
	cnf   [32]byte
	bound bool
	actor string
}

// cache holds verified tokens keyed by the SHA-256 of the token. It is
// bounded: when full, an arbitrary entry (Go's map order) is evicted, which
// costs O(1) and cannot be steered by an attacker. Entries are dropped when
// read past their expiry and all of them when the key set's generation moves.
type cache struct {
	mu      sync.RWMutex
	max     int
	gen     uint64
	entries map[[32]byte]*cacheEntry
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[[32]byte]*cacheEntry, min(max, 1024))}
}

func (c *cache) get(key [32]byte, gen uint64, now time.Time) (*cacheEntry, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.RLock()
	e, ok := c.entries[key]
	stale := c.gen != gen
	c.mu.RUnlock()
	if !ok || stale {
		return nil, false
	}
	if !now.Before(e.expires) {
		c.mu.Lock()
		delete(c.entries, key)
		c.mu.Unlock()
		return nil, false
	}
	return e, true
}

func (c *cache) put(key [32]byte, gen uint64, e *cacheEntry) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		// The key set changed: everything cached was verified against the old one.
		clear(c.entries)
		c.gen = gen
	}
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = e
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
