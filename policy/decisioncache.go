package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/authz"
)

// DefaultDecisionCacheSize bounds the decisions an Engine remembers per
// policy version.
const DefaultDecisionCacheSize = 10000

// decisionCache remembers decisions by a hash of their whole input. It is
// only used for a policy version that is a pure function of its input: one
// that calls no nondeterministic builtin (time.now_ns, http.send, rand.*,
// uuid.*, …; see cacheable). Such a policy gives the same decision for the
// same input and data, so a remembered decision is the one evaluation would
// give. Each policy version has its own cache, so a reload starts empty.
// Bounded: when full, an arbitrary entry is evicted.
type decisionCache struct {
	mu      sync.RWMutex
	max     int
	entries map[[32]byte]authz.Decision
}

func newDecisionCache(max int) *decisionCache {
	return &decisionCache{max: max, entries: make(map[[32]byte]authz.Decision, min(max, 1024))}
}

func (c *decisionCache) get(key [32]byte) (authz.Decision, bool) {
	c.mu.RLock()
	d, ok := c.entries[key]
	c.mu.RUnlock()
	return d, ok
}

func (c *decisionCache) put(key [32]byte, d authz.Decision) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = d
}

// cacheable reports whether the policy modules call no nondeterministic
// builtin, directly or through their own functions (all modules are
// walked), and names the first one it finds otherwise.
func cacheable(mods map[string]*ast.Module) (bool, string) {
	var found string
	check := func(op string) {
		if b, ok := ast.BuiltinMap[op]; found == "" && ok && b.Nondeterministic {
			found = op
		}
	}
	for _, m := range mods {
		ast.WalkTerms(m, func(t *ast.Term) bool {
			if call, ok := t.Value.(ast.Call); ok && len(call) > 0 {
				check(call[0].String())
			}
			return found != ""
		})
		ast.WalkExprs(m, func(e *ast.Expr) bool {
			if e.IsCall() {
				check(e.Operator().String())
			}
			return found != ""
		})
	}
	return found == "", found
}

// keyBuffers pools the buffers cache keys are assembled in.
var keyBuffers = sync.Pool{New: func() any { return &keyBuffer{} }}

// keyBuffer assembles a cache key's material: every field length-prefixed,
// hashed once at the end (one SHA-256 over a few hundred bytes costs less
// than many small writes to a hash).
type keyBuffer struct {
	b []byte
}

func (k *keyBuffer) str(s string) {
	k.b = binary.AppendUvarint(k.b, uint64(len(s)))
	k.b = append(k.b, s...)
}

func (k *keyBuffer) num(n uint64) { k.b = binary.AppendUvarint(k.b, n) }

// cacheKey hashes everything InputValue puts in the input document — the same
// fields, length-prefixed so no two inputs share an encoding — without
// building the document. The request is hashed in its deterministic proto
// encoding with its type name. ok is false when the request cannot be
// encoded (then the decision is evaluated, not cached).
func cacheKey(in *authz.Input) (key [32]byte, ok bool) {
	k := keyBuffers.Get().(*keyBuffer)
	defer func() {
		if cap(k.b) > 64<<10 {
			k.b = nil // a large request's buffer is not kept for the next call
		}
		keyBuffers.Put(k)
	}()
	k.b = k.b[:0]
	k.str(in.Procedure)
	k.str(in.Service)
	k.str(in.Method)
	k.str(in.StreamType)
	k.str(in.HTTPMethod)
	k.str(in.Protocol)
	if p := in.Principal; p != nil {
		k.num(1)
		k.str(p.Workload.ID.String())
		k.b = append(k.b, p.Workload.CertSHA256[:]...)
		if u := p.User; u != nil {
			k.num(1)
			k.str(u.Subject)
			k.num(uint64(len(u.Roles)))
			for _, r := range u.Roles {
				k.str(r)
			}
			k.str(u.Scope)
			k.num(uint64(len(u.Audience)))
			for _, a := range u.Audience {
				k.str(a)
			}
			k.str(u.Issuer)
			k.str(u.TokenID)
			k.num(uint64(u.ExpiresAt.Unix()))
			k.str(u.Actor)
			if u.CertBound {
				k.num(1)
			} else {
				k.num(0)
			}
		} else {
			k.num(0)
		}
	} else {
		k.num(0)
	}
	if in.Request != nil {
		k.num(1)
		k.str(string(in.Request.ProtoReflect().Descriptor().FullName()))
		// The message's size first, then its deterministic encoding.
		size := proto.MarshalOptions{Deterministic: true}.Size(in.Request)
		k.num(uint64(size))
		var err error
		if k.b, err = (proto.MarshalOptions{Deterministic: true}).MarshalAppend(k.b, in.Request); err != nil {
			return key, false
		}
	} else {
		k.num(0)
	}
	if r := in.Resource; r != nil {
		k.num(1)
		k.str(r.Kind)
		k.str(r.ID)
		k.str(r.Owner)
	} else {
		k.num(0)
	}
	return sha256.Sum256(k.b), true
}
