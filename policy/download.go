package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/download"
	"github.com/open-policy-agent/opa/v1/keys"
	"github.com/open-policy-agent/opa/v1/logging"
	"github.com/open-policy-agent/opa/v1/plugins/rest"
)

// BundleSource keeps an Engine's policy in step with an OPA bundle server,
// fetched with OPA's own downloader (github.com/open-policy-agent/opa/v1/download):
// polls answered "304 Not Modified" when the bundle's ETag has not changed,
// OPA's long polling when the server offers it, signed bundles
// (WithSigningKey). Each bundle it delivers passes the same gate as any
// policy version (Engine.Load): it compiles and its rego tests pass, or it
// is refused and the last good one keeps deciding. With WithPersistDir the
// last bundle that passed is kept on disk, so that a service whose bundle
// server is down when it starts decides with that one.
//
// NewEngine makes the engine from the source's first bundle; Run then keeps
// it in step until its context is done:
//
//	client, err := rpc.NewHTTPClient(src) // the service's own certificate
//	...
//	bundles, err := policy.NewBundleSource("https://bundles.example/authz.tar.gz", client,
//		policy.WithSigningKey("release", "", publicKeyPEM), policy.WithPersistDir("/var/lib/svc/policy"))
//	...
//	engine, err := bundles.NewEngine(ctx)
//	...
//	go bundles.Run(ctx)
type BundleSource struct {
	url       string
	cfg       bundleConfig
	log       *slog.Logger
	vc        *bundle.VerificationConfig
	d         *download.Downloader
	transport *bundleTransport

	started, running atomic.Bool

	// mu guards the state below. Updates come one at a time (the
	// downloader polls on one goroutine), but NewEngine reads what the
	// first one left.
	mu           sync.Mutex
	engine       *Engine
	first        *download.Update // the update NewEngine waits for
	firstRaw     []byte
	failures     int       // failed fetches in a row
	failureKind  string    // what the last of them was
	refused      string    // revision of the version refused last; "" when none is pending
	refusals     int       // refusals of that revision in a row
	retryAt      time.Time // when that revision may be tried again
	persistedRev string    // revision of the bundle in the persist directory

	// For tests (export_test.go): the clock, and a hook told what each
	// update came to.
	now     func() time.Time
	observe func(outcome string)
	gates   atomic.Int64 // versions put through the gate (compiled and tested)
}

// Outcomes of an update, for logs and tests.
const (
	outcomeNotModified = "not modified" // 304, or a bundle identical to the one in force
	outcomeLoaded      = "loaded"
	outcomeRefused     = "refused"     // the gate refused it (compile, tests)
	outcomeUnreadable  = "unreadable"  // the bundle could not be read or verified
	outcomeUnreachable = "unreachable" // the server did not answer, or not with 200/304
)

// BundleOption configures NewBundleSource.
type BundleOption interface {
	applyBundle(*bundleConfig)
}

type bundleConfig struct {
	logger     *slog.Logger
	persistDir string
	keys       map[string]*keys.Config
	scope      string
	minDelay   time.Duration
	maxDelay   time.Duration
	longPoll   time.Duration
	err        error // the first invalid option
}

type bundleOptionFunc func(*bundleConfig)

func (f bundleOptionFunc) applyBundle(c *bundleConfig) { f(c) }

func (c *bundleConfig) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// Polling defaults: OPA's.
const (
	defaultMinPollDelay = 60 * time.Second
	defaultMaxPollDelay = 120 * time.Second
	// fetchTimeout bounds the wait for a bundle server's answer (beyond the
	// long-poll timeout the client asked for) and then for its body.
	fetchTimeout = 30 * time.Second
)

// WithPollingDelay sets how long the source waits between two polls of the
// bundle server: a random delay between min and max, so that a fleet does
// not poll in step (OPA's default: 60 s to 120 s). A poll whose bundle has
// not changed costs the server a 304. A server that failed is asked again
// after a delay growing from 0 to max. OPA counts these delays in whole
// seconds: they are rounded up, and min must be at least a second.
func WithPollingDelay(min, max time.Duration) BundleOption {
	return bundleOptionFunc(func(c *bundleConfig) {
		if min < time.Second || max < min {
			c.fail(fmt.Errorf("policy: bundle polling delay %s to %s: want 1s <= min <= max", min, max))
			return
		}
		c.minDelay, c.maxDelay = min, max
	})
}

// WithLongPolling asks the bundle server to hold each poll until its
// bundle changes, for up to timeout (OPA's long polling: the "Prefer:
// wait=<seconds>" request header). Only a server that answers with the
// content type application/vnd.openpolicyagent.bundles holds polls; with
// any other the source polls with the polling delay. A new bundle then
// arrives as soon as it is published rather than at the next poll. The
// timeout is rounded up to whole seconds; the http.Client's Timeout, if
// set, must exceed it.
func WithLongPolling(timeout time.Duration) BundleOption {
	return bundleOptionFunc(func(c *bundleConfig) {
		if timeout < time.Second {
			c.fail(fmt.Errorf("policy: bundle long-polling timeout %s: want at least 1s", timeout))
			return
		}
		c.longPoll = timeout
	})
}

// WithPersistDir keeps the last bundle that passed the gate in dir (as
// bundle.tar.gz, mode 0600, replaced atomically; dir is created 0700 if
// missing). When the bundle server cannot be reached at start, or its
// bundle is refused, NewEngine starts from that one — still verified
// against the signing keys and tested again — and logs its revision and
// age. Without it, the service cannot start while its bundle server is down.
func WithPersistDir(dir string) BundleOption {
	return bundleOptionFunc(func(c *bundleConfig) {
		if dir == "" {
			c.fail(errors.New("policy: bundle persist directory is empty"))
			return
		}
		c.persistDir = dir
	})
}

// WithSigningKey makes the source accept only bundles signed (OPA bundle
// signatures: a .signatures.json file whose JWT names the SHA-256 of every
// file) with the key keyID, verified with publicKeyPEM: a PEM "PUBLIC KEY"
// (PKIX) or "RSA PUBLIC KEY" block. alg is the JWS algorithm the bundles
// are signed with (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
// ES512), or "" for the key's usual one: RS256 for RSA (OPA's default),
// ES256, ES384 or ES512 for an ECDSA key on P-256, P-384 or P-521. Given
// more than once, any of the keys is accepted, chosen by the key id the
// signature names (for a rotation). An unsigned bundle, one signed with
// another key, and one with a file added, removed or changed after signing
// are refused, and the last good policy keeps deciding. A private key, a
// shared secret (HS256) or a key that does not fit alg is a configuration
// error.
func WithSigningKey(keyID, alg string, publicKeyPEM []byte) BundleOption {
	return bundleOptionFunc(func(c *bundleConfig) {
		kc, err := verificationKey(keyID, alg, publicKeyPEM)
		if err != nil {
			c.fail(err)
			return
		}
		if c.keys == nil {
			c.keys = map[string]*keys.Config{}
		}
		if _, dup := c.keys[keyID]; dup {
			c.fail(fmt.Errorf("policy: bundle signing key %q given twice", keyID))
			return
		}
		c.keys[keyID] = kc
	})
}

// WithSigningScope requires the signature's scope claim to be scope (OPA's
// "scope" of bundle signing; without this option, a signature with a scope
// is refused).
func WithSigningScope(scope string) BundleOption {
	return bundleOptionFunc(func(c *bundleConfig) { c.scope = scope })
}

// NewBundleSource returns a source for the OPA bundle at location, an
// https URL, fetched with client: a Palisade mTLS client
// (rpc.NewHTTPClient with the service's own certificate source), so that
// the bundle server is checked like any other server of the mesh and
// knows which workload asks. Nothing is fetched until NewEngine.
func NewBundleSource(location string, client *http.Client, opts ...BundleOption) (*BundleSource, error) {
	cfg := bundleConfig{logger: slog.Default(), minDelay: defaultMinPollDelay, maxDelay: defaultMaxPollDelay}
	for _, o := range opts {
		o.applyBundle(&cfg)
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	if client == nil {
		return nil, errors.New("policy: bundle source needs an http.Client")
	}
	u, err := url.Parse(location)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a password
		}
		return nil, fmt.Errorf("policy: bundle URL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("policy: bundle URL %q: want https://host/path", u.Redacted())
	}
	if client.Timeout > 0 && cfg.longPoll > 0 && client.Timeout <= cfg.longPoll {
		return nil, fmt.Errorf("policy: bundle client timeout %s does not exceed the long-polling timeout %s", client.Timeout, cfg.longPoll)
	}
	s := &BundleSource{url: u.Redacted(), cfg: cfg, log: cfg.logger, now: time.Now}
	if len(cfg.keys) > 0 {
		s.vc = bundle.NewVerificationConfig(cfg.keys, "", cfg.scope, nil)
		if len(cfg.keys) == 1 {
			for id := range cfg.keys {
				s.vc.KeyID = id // the one key, whatever key id a signature names
			}
		}
	}

	base := client.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	s.transport = &bundleTransport{base: base}
	hc := *client
	hc.Transport = s.transport
	restConfig, err := json.Marshal(map[string]any{
		"url":         (&url.URL{Scheme: u.Scheme, Host: u.Host}).String(),
		"credentials": map[string]any{"plugin": clientPlugin},
	})
	if err != nil {
		return nil, fmt.Errorf("policy: bundle client: %w", err)
	}
	rc, err := rest.New(restConfig, nil,
		rest.AuthPluginLookup(func(name string) rest.HTTPAuthPlugin {
			if name == clientPlugin {
				return fixedClient{&hc}
			}
			return nil
		}),
		rest.Logger(logging.NewNoOpLogger()))
	if err != nil {
		return nil, fmt.Errorf("policy: bundle client: %w", err)
	}

	dc := download.Config{Polling: download.PollingConfig{
		MinDelaySeconds: seconds(cfg.minDelay),
		MaxDelaySeconds: seconds(cfg.maxDelay),
	}}
	if cfg.longPoll > 0 {
		dc.Polling.LongPollingTimeoutSeconds = seconds(cfg.longPoll)
	}
	if err := dc.ValidateAndInjectDefaults(); err != nil {
		return nil, fmt.Errorf("policy: bundle polling: %w", err)
	}
	s.d = download.New(dc, rc, u.RequestURI()).
		WithCallback(s.update).
		WithBundleVerificationConfig(s.vc).
		WithSizeLimitBytes(maxPolicyBytes).
		WithBundleParserOpts(ast.ParserOptions{RegoVersion: ast.RegoV1})
	return s, nil
}

// seconds rounds d up to whole seconds, OPA's unit for polling delays.
func seconds(d time.Duration) *int64 {
	n := int64((d + time.Second - 1) / time.Second)
	return &n
}

// clientPlugin names the REST "credentials plugin" through which OPA's
// downloader is handed the caller's http.Client.
const clientPlugin = "palisade"

// fixedClient is an OPA REST auth plugin that hands out one http.Client and
// adds nothing to requests: the client's certificate is the credential.
type fixedClient struct{ c *http.Client }

func (f fixedClient) NewClient(rest.Config) (*http.Client, error) { return f.c, nil }
func (fixedClient) Prepare(*http.Request) error                   { return nil }

// NewEngine fetches the bundle and returns an engine deciding with it (as
// policy.NewEngine does, with this source's logger unless opts give
// another). When the server cannot be reached, answers with an error, or
// its bundle is refused (unreadable, unsigned or badly signed, or failing
// the gate), the engine starts from the bundle persisted by WithPersistDir,
// verified and tested again, and the start is logged as a warning with
// that bundle's revision and age; a bundle the server offered and the gate
// refused is tried again later, as in Run. With no persisted bundle, or
// one refused too, NewEngine returns the error (wrapping ErrUntested when
// that was the reason). The first fetch waits at most 30 s for the server's
// answer (plus the long-polling timeout). It may be called once.
func (s *BundleSource) NewEngine(ctx context.Context, opts ...EngineOption) (*Engine, error) {
	if !s.started.CompareAndSwap(false, true) {
		return nil, errors.New("policy: bundle source: NewEngine called twice")
	}
	if s.cfg.persistDir != "" {
		if err := mkdirPersist(s.cfg.persistDir); err != nil {
			return nil, err
		}
	}
	_ = s.d.Trigger(ctx) // the outcome is in s.first
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("policy: bundle %s: %w", s.url, err)
	}
	opts = append([]EngineOption{WithLogger(s.log)}, opts...)

	s.mu.Lock()
	defer s.mu.Unlock()
	u, raw := s.first, s.firstRaw
	s.first, s.firstRaw = nil, nil
	fetchErr := errors.New("no answer")
	var kind string
	switch {
	case u == nil:
	case u.Error != nil:
		kind, fetchErr = failureKind(u.Error), u.Error
	case u.Bundle == nil:
		kind, fetchErr = outcomeUnreadable, errors.New("the server sent no bundle")
	default:
		b, err := fromOPA(u.Bundle, s.url)
		if err != nil {
			kind, fetchErr = outcomeUnreadable, err
			break
		}
		s.gates.Add(1)
		e, err := NewEngine(ctx, b, opts...)
		if err == nil {
			s.engine = e
			s.persist(ctx, raw, b)
			return e, nil
		}
		// Refused (and logged by the engine): retried later, like a
		// refusal in Run, while the persisted bundle decides.
		kind, fetchErr = outcomeRefused, err
		s.refused, s.refusals = b.Revision(), 1
		s.retryAt = s.now().Add(s.retryDelay(1))
	}
	if kind == outcomeUnreachable || kind == outcomeUnreadable {
		s.failures, s.failureKind = 1, kind
	}
	if s.cfg.persistDir == "" {
		return nil, fmt.Errorf("policy: bundle %s: %w (no persist directory to start from)", s.url, fetchErr)
	}
	p, err := readPersisted(s.cfg.persistDir, s.vc)
	if err != nil {
		return nil, fmt.Errorf("policy: bundle %s: %w; and %w", s.url, fetchErr, err)
	}
	s.gates.Add(1)
	e, err := NewEngine(ctx, p.bundle, opts...)
	if err != nil {
		return nil, fmt.Errorf("policy: bundle %s: %w; and the persisted bundle %s was refused: %w", s.url, fetchErr, p.bundle.Origin, err)
	}
	s.engine = e
	s.persistedRev = p.bundle.Revision()
	s.log.WarnContext(ctx, "policy bundle server unavailable at start; deciding with the persisted bundle",
		"url", s.url, "error", fetchErr, "persisted", p.bundle.Origin, "revision", p.bundle.Revision(),
		"bundle_revision", p.manifestRevision, "age", s.now().Sub(p.modTime).Round(time.Second).String())
	return e, nil
}

// Run keeps the engine made by NewEngine in step with the bundle server
// until ctx is done, then returns ctx's error. Each new bundle goes through
// the gate; a refused one is logged and tried again after a delay doubling
// from the polling delay up to two minutes, as long as the server still
// offers it, while the last good policy keeps deciding. A fetch that fails
// is retried by OPA's downloader with a backoff growing to the maximum
// polling delay; the first failure is logged as an error, the next ones as
// warnings, recovery at info.
func (s *BundleSource) Run(ctx context.Context) error {
	s.mu.Lock()
	ready := s.engine != nil
	s.mu.Unlock()
	if !ready {
		return errors.New("policy: bundle source: Run before NewEngine made an engine")
	}
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("policy: bundle source: Run called twice")
	}
	s.d.Start(ctx)
	<-ctx.Done()
	s.d.Stop(context.Background()) // cancels a poll in flight and waits for the loop
	return ctx.Err()
}

// retryDelay is the delay before a version refused n times in a row (n >= 1)
// is tried again: the minimum polling delay (at least a second), doubling,
// up to maxRetryDelay.
func (s *BundleSource) retryDelay(n int) time.Duration {
	d := max(s.cfg.minDelay, time.Second)
	for i := 1; i < n && d < maxRetryDelay; i++ {
		d *= 2
	}
	return min(d, maxRetryDelay)
}

// update is the downloader's callback, called after each poll.
func (s *BundleSource) update(ctx context.Context, u download.Update) error {
	raw := s.transport.take()
	if ctx.Err() != nil {
		return nil // Run is stopping: the poll was cut short
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.engine == nil { // NewEngine's first fetch
		s.first, s.firstRaw = &u, raw
		return nil
	}
	outcome := s.apply(ctx, u, raw)
	if s.observe != nil {
		s.observe(outcome)
	}
	return nil
}

// apply handles one update while an engine decides.
func (s *BundleSource) apply(ctx context.Context, u download.Update, raw []byte) string {
	if u.Error != nil {
		return s.fetchFailed(ctx, failureKind(u.Error), u.Error)
	}
	if s.failures > 0 {
		s.log.InfoContext(ctx, "policy bundle fetched again", "url", s.url, "after", s.failureKind, "failures", s.failures)
		s.failures, s.failureKind = 0, ""
	}
	if u.Bundle == nil { // 304
		if s.refused != "" && !s.now().Before(s.retryAt) {
			s.transport.refetch.Store(true) // the refused version, again
		}
		return outcomeNotModified
	}
	b, err := fromOPA(u.Bundle, s.url)
	if err != nil {
		return s.fetchFailed(ctx, outcomeUnreadable, err)
	}
	rev := b.Revision()
	if rev == s.engine.Revision() {
		s.refused = ""
		s.persist(ctx, raw, b)
		return outcomeNotModified
	}
	if rev == s.refused && s.now().Before(s.retryAt) {
		return outcomeRefused
	}
	s.gates.Add(1)
	if err := s.engine.swap(ctx, b); err != nil {
		if rev != s.refused {
			s.refused, s.refusals = rev, 0
		}
		s.refusals++
		delay := s.retryDelay(s.refusals)
		s.retryAt = s.now().Add(delay)
		attrs := []any{"origin", b.Origin, "revision", rev, "bundle_revision", u.Bundle.Manifest.Revision, "error", err, "retry_in", delay.String()}
		if s.refusals == 1 {
			s.log.ErrorContext(ctx, "policy refused; the previous one stays in force", attrs...)
		} else {
			s.log.WarnContext(ctx, "policy refused again; the previous one stays in force", append(attrs, "refusals", s.refusals)...)
		}
		return outcomeRefused
	}
	if rev == s.refused {
		s.log.InfoContext(ctx, "policy accepted on retry", "origin", b.Origin, "revision", rev, "refusals", s.refusals)
	}
	s.refused, s.refusals = "", 0
	s.persist(ctx, raw, b)
	return outcomeLoaded
}

// fetchFailed logs a failed fetch: the first of a kind in a row as an
// error, the next ones as warnings.
func (s *BundleSource) fetchFailed(ctx context.Context, kind string, err error) string {
	if kind != s.failureKind {
		s.failures = 0
	}
	s.failures++
	s.failureKind = kind
	msg := "policy bundle server unreachable; the previous policy stays in force"
	if kind == outcomeUnreadable {
		msg = "policy bundle refused: unreadable, unsigned or not signed as configured; the previous policy stays in force"
	}
	attrs := []any{"url", s.url, "error", err, "signed", s.vc != nil}
	if s.failures == 1 {
		s.log.ErrorContext(ctx, msg, attrs...)
	} else {
		s.log.WarnContext(ctx, msg, append(attrs, "failures", s.failures)...)
	}
	return kind
}

// failureKind tells a server that did not answer (or not with a bundle)
// from a bundle that could not be read or verified.
func failureKind(err error) string {
	var status download.HTTPError
	var transport *url.Error
	switch {
	case errors.Is(err, errTooLarge):
		return outcomeUnreadable
	case errors.As(err, &status), errors.As(err, &transport):
		return outcomeUnreachable
	}
	return outcomeUnreadable
}

// fromOPA converts a bundle read by OPA to a Bundle: its rego modules by
// their path in the archive, its data. Delta bundles, Wasm and plan modules
// are refused: the engine evaluates rego.
func fromOPA(ob *bundle.Bundle, origin string) (*Bundle, error) {
	if ob.Type() != bundle.SnapshotBundleType {
		return nil, fmt.Errorf("policy: bundle %s: a %s bundle; only snapshot bundles are supported", origin, ob.Type())
	}
	if len(ob.WasmModules) > 0 || len(ob.PlanModules) > 0 {
		return nil, fmt.Errorf("policy: bundle %s: Wasm and plan modules are not supported", origin)
	}
	b := &Bundle{Modules: make(map[string]string, len(ob.Modules)), Origin: origin}
	for _, m := range ob.Modules {
		b.Modules[strings.TrimPrefix(path.Clean("/"+m.RelativePath), "/")] = string(m.Raw)
	}
	if len(b.Modules) == 0 {
		return nil, fmt.Errorf("policy: bundle %s: no .rego files", origin)
	}
	if len(ob.Data) > 0 {
		b.Data = ob.Data
	}
	return b, nil
}
