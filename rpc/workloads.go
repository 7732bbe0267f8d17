package rpc

import (
	"crypto/x509"
	"sync"

	"github.com/palisade-rpc/palisade/security"
)

// workloadCacheSize bounds the workload identities the server remembers.
const workloadCacheSize = 4096

// workloadCache remembers the workload identity of verified client
// certificates, keyed by the certificate itself (the pointer crypto/tls
// hands every request of a connection in its VerifiedChains). Reading the
// identity — the SAN's DER, the SPIFFE ID's parse, the certificate's
// SHA-256 — is the same work for every request of a connection; doing it
// once per connection took it off the path of every call. A remembered
// pointer keeps its certificate alive, so an address cannot be reused by
// another certificate while it is a key. Only identities that passed are
// remembered; when full, an arbitrary entry is evicted.
type workloadCache struct {
	mu      sync.RWMutex
	entries map[*x509.Certificate]security.Workload
}

func (c *workloadCache) get(leaf *x509.Certificate) (security.Workload, bool) {
	c.mu.RLock()
	w, ok := c.entries[leaf]
	c.mu.RUnlock()
	return w, ok
}

func (c *workloadCache) put(leaf *x509.Certificate, w security.Workload) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[*x509.Certificate]security.Workload)
	}
	if _, ok := c.entries[leaf]; !ok && len(c.entries) >= workloadCacheSize {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[leaf] = w
}
