package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/palisade-rpc/palisade/authz"
)

// Engine is an authz.Authorizer backed by Open Policy Agent, embedded. It
// decides with the framework's base policy (Base) and one layer: the rules
// of the service it authorizes for. The base and the layer are compiled and
// the decision query prepared once per version of the layer; a call only
// evaluates. Load swaps in a new version of the layer after the whole
// compiles and the layer's own rego tests pass — a layer without tests is
// refused too (ErrUntested), unless WithUntestedPolicies; until then, and
// whenever a version is refused, the last good one keeps deciding.
type Engine struct {
	cur    atomic.Pointer[version]
	log    *slog.Logger
	cancel topdown.Cancel
	cfg    engineConfig
}

// ErrUntested is the error (wrapped) of loading a policy version that
// carries no rego test: a directory whose *_test.rego files went missing
// would otherwise turn the test gate off unnoticed.
var ErrUntested = errors.New("policy: no rego tests; a policy is loaded only with tests that pass")

type version struct {
	query    rego.PreparedEvalQuery
	revision string
	origin   string
	tests    int
	// cache is nil when the policy is not a pure function of its input.
	cache *decisionCache
	// early: the policy mentions request_needed, so asking it before a
	// request is read may settle the call (see DecidesBeforeRequest).
	early bool
}

// EngineOption configures NewEngine.
type EngineOption interface {
	applyEngine(*engineConfig)
}

type engineConfig struct {
	logger        *slog.Logger
	allowUntested bool
	withoutBase   bool
	data          []map[string]any
}

type engineOptionFunc func(*engineConfig)

func (f engineOptionFunc) applyEngine(c *engineConfig) { f(c) }

// Option configures NewEngine and NewBundleSource alike.
type Option interface {
	EngineOption
	BundleOption
}

type loggerOption struct{ l *slog.Logger }

func (o loggerOption) applyEngine(c *engineConfig) {
	if o.l != nil {
		c.logger = o.l
	}
}

func (o loggerOption) applyBundle(c *bundleConfig) {
	if o.l != nil {
		c.logger = o.l
	}
}

// WithLogger sets the logger (default slog.Default()) that receives the
// engine's reloads, refusals and evaluation errors, or a bundle source's
// fetches and refusals. Log lines name sources, revisions and reasons,
// never key material.
func WithLogger(l *slog.Logger) Option { return loggerOption{l} }

// WithUntestedPolicies makes the engine load policy versions that carry no
// rego test (none ran: there are none, or all are skipped). It is unsafe:
// nothing then checks a new version before it decides, and a policy
// directory that lost its tests is taken as it is. Each such version is
// logged as a warning when it is loaded. Without it such a version is
// refused with ErrUntested.
func WithUntestedPolicies() EngineOption {
	return engineOptionFunc(func(c *engineConfig) { c.allowUntested = true })
}

// WithoutBase makes the engine decide with the layer alone, without the
// base policy: for a caller whose policy is complete in itself, defining
// data.palisade.authz.decision (the conformance harness's, say). The layer
// may then define anything.
func WithoutBase() EngineOption {
	return engineOptionFunc(func(c *engineConfig) { c.withoutBase = true })
}

// WithData lays doc over the data of every version the engine loads: the
// layer's data.json holds defaults, and doc the deployment's configuration,
// which wins — objects are merged key by key, any other value of doc
// replaces the layer's. A service passes its configuration this way, for
// example {"palisade": {"config": {"trust_domain": "example.org",
// "delegates": [...]}}}, so that a new workload is added to a list without
// a new version of the layer. Several WithData are laid in order.
func WithData(doc map[string]any) EngineOption {
	doc = deepCopy(doc)
	return engineOptionFunc(func(c *engineConfig) { c.data = append(c.data, doc) })
}

// NewEngine returns an Engine deciding with the base policy and layer, the
// service's own rules: the two must compile together, and the layer's tests
// pass (and it must have some, unless WithUntestedPolicies).
func NewEngine(ctx context.Context, layer *Bundle, opts ...EngineOption) (*Engine, error) {
	cfg := engineConfig{logger: slog.Default()}
	for _, o := range opts {
		o.applyEngine(&cfg)
	}
	// One cancel shared by every evaluation and never fired: without an
	// external cancel, OPA starts a goroutine per evaluation to watch ctx.
	// Evaluations of these policies take microseconds.
	e := &Engine{log: cfg.logger, cancel: topdown.NewCancel(), cfg: cfg}
	if err := e.Load(ctx, layer); err != nil {
		return nil, err
	}
	return e, nil
}

// Load compiles the base policy with b, a version of the service's layer,
// runs the layer's rego tests and, if both succeed, makes it the policy in
// force. A version in which no test ran is refused with ErrUntested, unless
// the engine was made WithUntestedPolicies. On error nothing changes, and
// the refusal is logged.
func (e *Engine) Load(ctx context.Context, b *Bundle) error {
	if err := e.swap(ctx, b); err != nil {
		e.log.ErrorContext(ctx, "policy refused; the previous one stays in force",
			"origin", b.Origin, "revision", b.Revision(), "error", err)
		return err
	}
	return nil
}

// swap is Load without logging a refusal: Watch logs its own, with the
// retry it schedules.
func (e *Engine) swap(ctx context.Context, b *Bundle) error {
	v, err := prepare(ctx, b, e.cfg)
	if err != nil {
		return err
	}
	old := e.cur.Swap(v)
	if old == nil || old.revision != v.revision {
		attrs := []any{"origin", v.origin, "revision", v.revision, "tests", v.tests, "decision_cache", v.cache != nil}
		if v.tests == 0 {
			e.log.WarnContext(ctx, "policy loaded WITHOUT rego tests (allowed untested): nothing checked it before it decides", attrs...)
		} else {
			e.log.InfoContext(ctx, "policy loaded", attrs...)
		}
	}
	return nil
}

// compose returns what decides with layer under cfg — the base, layer and
// WithData's document, merged — parsed, and the names of layer's modules
// among them. It refuses a layer that changes the base (checkLayer).
func compose(layer *Bundle, cfg engineConfig) (map[string]*ast.Module, map[string]any, map[string]bool, error) {
	if layer == nil {
		return nil, nil, nil, errors.New("policy: no policy layer")
	}
	var base *Bundle
	if !cfg.withoutBase {
		base = Base()
	}
	all, err := Merge(base, layer)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(cfg.data) > 0 {
		if all.Data == nil {
			all.Data = map[string]any{}
		}
		for _, doc := range cfg.data {
			overlay(all.Data, doc)
		}
	}
	mods, err := parseModules(all)
	if err != nil {
		return nil, nil, nil, err
	}
	own := make(map[string]bool, len(layer.Modules))
	for name := range layer.Modules {
		own[name] = true
	}
	if base != nil {
		if err := checkLayer(mods, own); err != nil {
			return nil, nil, nil, err
		}
	}
	data := all.Data
	if data == nil {
		data = map[string]any{}
	}
	return mods, data, own, nil
}

// prepare compiles the base with the layer b, runs the layer's tests, and
// prepares the decision query. A version in which no test ran is refused
// unless cfg.allowUntested.
func prepare(ctx context.Context, b *Bundle, cfg engineConfig) (*version, error) {
	mods, data, own, err := compose(b, cfg)
	if err != nil {
		return nil, err
	}
	report, err := runTests(ctx, mods, data, own, false)
	if err != nil {
		return nil, err
	}
	if failed := report.Failed(); len(failed) > 0 {
		names := make([]string, 0, len(failed))
		for _, f := range failed {
			names = append(names, f.Name+" ("+f.Failure+")")
		}
		return nil, fmt.Errorf("policy: %d of %d rego tests failed: %s", len(failed), len(report.Results), strings.Join(names, "; "))
	}
	ran := report.ran()
	if ran == 0 && !cfg.allowUntested {
		if n := len(report.Results); n > 0 {
			return nil, fmt.Errorf("%w (all %d skipped)", ErrUntested, n)
		}
		return nil, ErrUntested
	}
	// Strict builtin errors: a builtin that fails (to_number("x")) is an
	// evaluation error, logged and denied, not a silently undefined value.
	opts := []func(*rego.Rego){rego.Query(Query), rego.SetRegoVersion(ast.RegoV1), rego.StrictBuiltinErrors(true)}
	names := make([]string, 0, len(mods))
	for name := range mods {
		if !IsTestFile(name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		opts = append(opts, rego.ParsedModule(mods[name]))
	}
	opts = append(opts, rego.Store(inmem.NewFromObject(data)))
	q, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: compile: %w", err)
	}
	v := &version{query: q, revision: b.Revision(), origin: b.Origin, tests: ran, early: mentionsRequestNeeded(mods)}
	if ok, _ := cacheable(mods); ok {
		v.cache = newDecisionCache(DefaultDecisionCacheSize)
	}
	return v, nil
}

// Revision returns the revision of the layer in force (Bundle.Revision):
// the base is the binary's.
func (e *Engine) Revision() string { return e.cur.Load().revision }

// Decide implements authz.Authorizer. A policy that is a pure function of its
// input (it calls no nondeterministic builtin) has its decisions remembered
// by a hash of the whole input, per policy version; any other is evaluated
// on every call.
func (e *Engine) Decide(ctx context.Context, in *authz.Input) (authz.Decision, error) {
	v := e.cur.Load()
	if v.cache == nil {
		return e.eval(ctx, v, InputValue(in))
	}
	key, ok := cacheKey(in)
	if ok {
		if d, hit := v.cache.get(key); hit {
			return d, nil
		}
	}
	d, err := e.eval(ctx, v, InputValue(in))
	if err == nil && ok {
		v.cache.put(key, d)
	}
	return d, err
}

// Eval evaluates the decision for an input document. Anything but one
// decision document with a boolean allow, an array of string reasons and
// optionally a boolean need_user and a boolean request_needed is an error,
// and the caller denies.
func (e *Engine) Eval(ctx context.Context, input ast.Value, extra ...rego.EvalOption) (authz.Decision, error) {
	return e.eval(ctx, e.cur.Load(), input, extra...)
}

func (e *Engine) eval(ctx context.Context, v *version, input ast.Value, extra ...rego.EvalOption) (authz.Decision, error) {
	d := authz.Decision{Revision: v.revision}
	opts := append([]rego.EvalOption{rego.EvalParsedInput(input), rego.EvalExternalCancel(e.cancel)}, extra...)
	rs, err := v.query.Eval(ctx, opts...)
	if err != nil {
		return d, fmt.Errorf("policy: evaluation: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return d, errors.New("policy: decision is undefined")
	}
	if len(rs) > 1 || len(rs[0].Expressions) > 1 {
		return d, errors.New("policy: more than one decision")
	}
	doc, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return d, fmt.Errorf("policy: decision is a %T, not an object", rs[0].Expressions[0].Value)
	}
	allow, ok := doc["allow"].(bool)
	if !ok {
		return d, fmt.Errorf("policy: decision.allow is a %T, not a boolean", doc["allow"])
	}
	if raw, present := doc["reasons"]; present {
		list, ok := raw.([]any)
		if !ok {
			return d, fmt.Errorf("policy: decision.reasons is a %T, not an array", raw)
		}
		for _, r := range list {
			s, ok := r.(string)
			if !ok {
				return d, fmt.Errorf("policy: a reason is a %T, not a string", r)
			}
			d.Reasons = append(d.Reasons, s)
		}
	}
	if raw, present := doc["need_user"]; present {
		need, ok := raw.(bool)
		if !ok {
			return d, fmt.Errorf("policy: decision.need_user is a %T, not a boolean", raw)
		}
		d.NeedsUser = need
	}
	if raw, present := doc["request_needed"]; present {
		need, ok := raw.(bool)
		if !ok {
			return d, fmt.Errorf("policy: decision.request_needed is a %T, not a boolean", raw)
		}
		// Absent, the request is needed: only an explicit false settles a
		// call before its request is read.
		d.IgnoresRequest = !need
	}
	d.Allow = allow
	return d, nil
}

// Explain evaluates input like Eval and also returns the rules that fired
// (evaluated to a value), as "file:line: head", in file and line order, for a
// person debugging a decision.
func (e *Engine) Explain(ctx context.Context, input ast.Value) (authz.Decision, []string, error) {
	tracer := topdown.NewBufferTracer()
	d, err := e.Eval(ctx, input, rego.EvalQueryTracer(tracer))
	seen := map[*ast.Rule]bool{}
	var rules []*ast.Rule
	for _, ev := range *tracer {
		if rule, ok := ev.Node.(*ast.Rule); ok && ev.Op == topdown.ExitOp && rule.Location != nil && !seen[rule] {
			seen[rule] = true
			rules = append(rules, rule)
		}
	}
	sort.Slice(rules, func(i, j int) bool {
		a, b := rules[i].Location, rules[j].Location
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Row < b.Row
	})
	fired := make([]string, 0, len(rules))
	for _, r := range rules {
		fired = append(fired, fmt.Sprintf("%s:%d: %s", r.Location.File, r.Location.Row, ruleHead(r)))
	}
	return d, fired, err
}

// ruleHead renders a rule's head for a person: its name, and the value or
// set member when it is a constant (not a compiler-generated local).
func ruleHead(r *ast.Rule) string {
	h := r.Head
	name := h.Ref().String()
	if len(h.Args) > 0 {
		name += "(" + h.Args.String()[1:len(h.Args.String())-1] + ")"
	}
	switch {
	case h.Key != nil && h.Value == nil:
		return name + " contains " + shortTerm(h.Key)
	case h.Value != nil && ast.IsConstant(h.Value.Value):
		return name + " := " + shortTerm(h.Value)
	}
	return name
}

func shortTerm(t *ast.Term) string {
	s := t.String()
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}
