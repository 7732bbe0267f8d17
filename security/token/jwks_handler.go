package token

import (
	"net/http"
	"sync/atomic"
)

// JWKSPath is where a Palisade issuer serves its public keys.
const JWKSPath = "/.well-known/jwks.json"

// JWKSHandler serves the current JWKS document. Set replaces it after a key
// rotation; retired keys disappear from it.
type JWKSHandler struct {
	doc atomic.Pointer[[]byte]
}

// Set publishes keys.
func (h *JWKSHandler) Set(keys []*PublicKey) error {
	doc, err := MarshalJWKS(keys)
	if err != nil {
		return err
	}
	h.doc.Store(&doc)
	return nil
}

// ServeHTTP implements http.Handler (GET and HEAD only).
func (h *JWKSHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	doc := h.doc.Load()
	if doc == nil {
		http.Error(w, "no keys", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	// Verifiers refetch on an unknown kid, so a short cache life is enough.
	w.Header().Set("Cache-Control", "max-age=60")
	_, _ = w.Write(*doc)
}
