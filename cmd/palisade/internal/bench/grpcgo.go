package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/services/user"
)

// The chains a grpc-go user would write without Palisade, in a unary
// interceptor: the peer's SPIFFE ID from the verified certificate, the
// token verified with golang-jwt (signature, algorithm, iss, aud, exp) and
// checked against the certificate it is bound to, and the default policy
// evaluated by an OPA prepared query on an input built as a Go map, the
// request converted through protojson. naiveChain does all of it on every
// call; cachedChain remembers verified tokens and decisions.

// opaChain is what both chains share: the prepared query, the token key
// and the clock (golang-jwt's too).
type opaChain struct {
	query rego.PreparedEvalQuery
	key   ed25519.PublicKey
	now   func() time.Time
}

func newOPAChain(ctx context.Context, sf *serverFixture, now func() time.Time) (opaChain, error) {
	layer, err := policy.LoadFS(user.Policy(), "services/user/policy")
	if err != nil {
		return opaChain{}, fmt.Errorf("bench: %w", err)
	}
	bundle, err := policy.Merge(policy.Base(), layer)
	if err != nil {
		return opaChain{}, fmt.Errorf("bench: %w", err)
	}
	opts := []func(*rego.Rego){rego.Query(policy.Query), rego.Store(inmem.NewFromObject(bundle.Data))}
	for name, src := range bundle.Modules {
		if !policy.IsTestFile(name) {
			opts = append(opts, rego.Module(name, src))
		}
	}
	q, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return opaChain{}, fmt.Errorf("bench: prepare the policy for grpc-go: %w", err)
	}
	return opaChain{query: q, key: sf.pub, now: now}, nil
}

// callPeer is the verified client certificate's identity.
type callPeer struct {
	id  string
	sum [32]byte
}

// peerOf returns the identity of the call's verified client certificate.
func peerOf(ctx context.Context) (callPeer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return callPeer{}, status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return callPeer{}, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return callPeer{}, status.Error(codes.Unauthenticated, "client certificate carries no SPIFFE ID")
	}
	return callPeer{id: leaf.URIs[0].String(), sum: sha256.Sum256(leaf.Raw)}, nil
}

// bearerOf returns the call's bearer token ("" when it has none).
func bearerOf(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) == 0 {
		return "", nil
	}
	raw, ok := strings.CutPrefix(auth[0], "Bearer ")
	if !ok || len(auth) > 1 || raw == "" {
		return "", status.Error(codes.Unauthenticated, "invalid token")
	}
	return raw, nil
}

// naiveClaims are the token's claims as a user would declare them.
type naiveClaims struct {
	jwt.RegisteredClaims
	Roles []string `json:"roles"`
	Scope string   `json:"scope"`
	Cnf   *struct {
		X5tS256 string `json:"x5t#S256"`
	} `json:"cnf"`
	Act *struct {
		Sub string `json:"sub"`
	} `json:"act"`
}

// tokenInfo is a verified token: what the policy input needs and the
// certificate it is bound to.
type tokenInfo struct {
	sub, scope, iss, jti string
	roles, aud           []string
	exp                  time.Time
	act                  string
	hasAct               bool
	cnf                  [32]byte
}

// verify checks raw with golang-jwt and returns what it says. A token
// that is not bound to a certificate is refused: every token of the
// harness is bound.
func (c *opaChain) verify(raw string) (*tokenInfo, error) {
	var claims naiveClaims
	_, err := jwt.ParseWithClaims(raw, &claims, func(*jwt.Token) (any, error) { return c.key, nil },
		jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer(serverID), jwt.WithAudience(serverID),
		jwt.WithExpirationRequired(), jwt.WithTimeFunc(c.now))
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, "invalid token")
	}
	t := &tokenInfo{sub: claims.Subject, scope: claims.Scope, iss: claims.Issuer, jti: claims.ID,
		roles: claims.Roles, aud: claims.Audience, exp: claims.ExpiresAt.Time}
	if claims.Act != nil {
		t.act, t.hasAct = claims.Act.Sub, true
	}
	if claims.Cnf == nil {
		return nil, status.Error(codes.Unauthenticated, "token is not bound to a certificate")
	}
	sum, err := base64.RawURLEncoding.DecodeString(claims.Cnf.X5tS256)
	if err != nil || len(sum) != len(t.cnf) {
		return nil, status.Error(codes.Unauthenticated, "invalid token")
	}
	copy(t.cnf[:], sum)
	return t, nil
}

// checkBinding refuses a token presented with another certificate than
// the one it is bound to.
func checkBinding(t *tokenInfo, p callPeer) error {
	if subtle.ConstantTimeCompare(t.cnf[:], p.sum[:]) != 1 {
		return status.Error(codes.Unauthenticated, "token is not bound to this client certificate")
	}
	return nil
}

// decide builds the policy input as a Go map and evaluates the policy:
// whether the call is allowed, and the policy's reasons when it is not.
func (c *opaChain) decide(ctx context.Context, procedure string, p callPeer, t *tokenInfo, req any) (bool, string, error) {
	service, method := authz.SplitProcedure(procedure)
	input := map[string]any{
		"procedure":   procedure,
		"service":     service,
		"method":      method,
		"stream_type": "unary",
		"peer":        map[string]any{"spiffe_id": p.id, "cert_sha256": hex.EncodeToString(p.sum[:])},
		"http":        map[string]any{"method": "POST", "protocol": "grpc"},
	}
	if t != nil {
		var act any
		if t.hasAct {
			act = map[string]any{"sub": t.act}
		}
		input["token"] = map[string]any{
			"sub": t.sub, "roles": t.roles, "scope": t.scope, "aud": t.aud,
			"iss": t.iss, "jti": t.jti, "exp": t.exp.Unix(), "act": act, "bound": true,
		}
	}
	if msg, ok := req.(proto.Message); ok {
		data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
		if err != nil {
			return false, "", status.Error(codes.Internal, "cannot convert the request")
		}
		var request map[string]any
		if err := json.Unmarshal(data, &request); err != nil {
			return false, "", status.Error(codes.Internal, "cannot convert the request")
		}
		input["request"] = request
	}
	rs, err := c.query.Eval(ctx, rego.EvalInput(input))
	if err != nil || len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return false, "", status.Error(codes.PermissionDenied, "permission denied")
	}
	decision, _ := rs[0].Expressions[0].Value.(map[string]any)
	allow, _ := decision["allow"].(bool)
	return allow, fmt.Sprint(decision["reasons"]), nil
}

// naiveChain does the whole chain on every call, with no cache.
type naiveChain struct{ opaChain }

func newNaiveChain(ctx context.Context, sf *serverFixture, now func() time.Time) (*naiveChain, error) {
	c, err := newOPAChain(ctx, sf, now)
	if err != nil {
		return nil, err
	}
	return &naiveChain{c}, nil
}

func (n *naiveChain) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, err := peerOf(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := bearerOf(ctx)
	if err != nil {
		return nil, err
	}
	var t *tokenInfo
	if raw != "" {
		if t, err = n.verify(raw); err != nil {
			return nil, err
		}
		if err := checkBinding(t, p); err != nil {
			return nil, err
		}
	}
	allow, reasons, err := n.decide(ctx, info.FullMethod, p, t, req)
	if err != nil {
		return nil, err
	}
	if !allow {
		return nil, status.Errorf(codes.PermissionDenied, "permission denied: %s", reasons)
	}
	return handler(ctx, req)
}

// defaultCacheSize bounds each cache of cachedChain, as Palisade bounds
// its own (token.DefaultCacheSize, policy.DefaultDecisionCacheSize).
const defaultCacheSize = 10000

// tokenlessDecisionTTL is how long a decision about a call without a token
// is remembered (one with a token expires with it).
const tokenlessDecisionTTL = time.Minute

// cachedChain is naiveChain with the caches a competent team would add: a
// verified token is remembered by the SHA-256 of the token until it
// expires (the certificate binding is still checked on every call), and a
// decision by the SHA-256 of everything its input holds until its token
// expires. Both caches are bounded.
type cachedChain struct {
	opaChain
	tokens    *ttlCache[*tokenInfo]
	decisions *ttlCache[cachedDecision]
}

type cachedDecision struct {
	allow   bool
	reasons string
}

func newCachedChain(ctx context.Context, sf *serverFixture, size int, now func() time.Time) (*cachedChain, error) {
	c, err := newOPAChain(ctx, sf, now)
	if err != nil {
		return nil, err
	}
	return &cachedChain{opaChain: c, tokens: newTTLCache[*tokenInfo](size), decisions: newTTLCache[cachedDecision](size)}, nil
}

func (c *cachedChain) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, err := peerOf(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := bearerOf(ctx)
	if err != nil {
		return nil, err
	}
	now := c.now()
	var t *tokenInfo
	expires := now.Add(tokenlessDecisionTTL)
	if raw != "" {
		key := sha256.Sum256([]byte(raw))
		var ok bool
		if t, ok = c.tokens.get(key, now); !ok {
			if t, err = c.verify(raw); err != nil {
				return nil, err
			}
			c.tokens.put(key, t, t.exp)
		}
		if err := checkBinding(t, p); err != nil {
			return nil, err
		}
		expires = t.exp
	}
	key, cacheable := decisionKey(info.FullMethod, p, t, req)
	d, ok := cachedDecision{}, false
	if cacheable {
		d, ok = c.decisions.get(key, now)
	}
	if !ok {
		if d.allow, d.reasons, err = c.decide(ctx, info.FullMethod, p, t, req); err != nil {
			return nil, err
		}
		if cacheable {
			c.decisions.put(key, d, expires)
		}
	}
	if !d.allow {
		return nil, status.Errorf(codes.PermissionDenied, "permission denied: %s", d.reasons)
	}
	return handler(ctx, req)
}

// decisionKey hashes everything decide puts in the input: every field
// length-prefixed, so that no two inputs share an encoding, the request in
// its deterministic proto encoding. ok is false when the request cannot be
// encoded.
func decisionKey(procedure string, p callPeer, t *tokenInfo, req any) (key [32]byte, ok bool) {
	b := make([]byte, 0, 512)
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	list := func(l []string) {
		b = binary.AppendUvarint(b, uint64(len(l)))
		for _, s := range l {
			str(s)
		}
	}
	str(procedure)
	str(p.id)
	b = append(b, p.sum[:]...)
	if t != nil {
		b = append(b, 1)
		str(t.sub)
		list(t.roles)
		str(t.scope)
		list(t.aud)
		str(t.iss)
		str(t.jti)
		b = binary.AppendVarint(b, t.exp.Unix())
		if t.hasAct {
			b = append(b, 1)
			str(t.act)
		} else {
			b = append(b, 0)
		}
	} else {
		b = append(b, 0)
	}
	if msg, isMsg := req.(proto.Message); isMsg {
		b = append(b, 1)
		str(string(msg.ProtoReflect().Descriptor().FullName()))
		opts := proto.MarshalOptions{Deterministic: true}
		b = binary.AppendUvarint(b, uint64(opts.Size(msg)))
		var err error
		if b, err = opts.MarshalAppend(b, msg); err != nil {
			return key, false
		}
	} else {
		b = append(b, 0)
	}
	return sha256.Sum256(b), true
}

// ttlCache is a bounded map from a SHA-256 to a value with an expiry. A
// read past the expiry misses (and drops the entry); when full, an
// arbitrary entry is evicted (Go's map order: O(1), and no caller can
// steer it).
type ttlCache[V any] struct {
	mu      sync.RWMutex
	max     int
	entries map[[32]byte]ttlEntry[V]
}

type ttlEntry[V any] struct {
	v       V
	expires time.Time
}

func newTTLCache[V any](max int) *ttlCache[V] {
	return &ttlCache[V]{max: max, entries: make(map[[32]byte]ttlEntry[V], min(max, 1024))}
}

func (c *ttlCache[V]) get(key [32]byte, now time.Time) (V, bool) {
	c.mu.RLock()
	e, ok := c.entries[key]
	c.mu.RUnlock()
	if ok && !now.Before(e.expires) {
		c.mu.Lock()
		if cur, still := c.entries[key]; still && !now.Before(cur.expires) {
			delete(c.entries, key)
		}
		c.mu.Unlock()
		ok = false
	}
	if !ok {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *ttlCache[V]) put(key [32]byte, v V, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = ttlEntry[V]{v: v, expires: expires}
}

func (c *ttlCache[V]) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
