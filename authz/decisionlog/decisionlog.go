// Package decisionlog ships a server's authorization decisions to a
// decision log service, as Open Policy Agent does: batches of events in
// OPA's decision log format (the EventV1 of OPA's plugins/logs — decision
// id, labels, revision, path, input, result, erased, timestamp), as a
// gzipped JSON array POSTed to a URL, over mutual TLS with the workload's
// certificate. A service that sends OPA's decision logs to a collector can
// send Palisade's to the same one.
//
// A Shipper is told of each decision by the authorization interceptor
// (authz.WithDecisionHook(shipper.Hook)) and keeps it in a buffer bounded
// in bytes; Run sends the buffer in batches and retries a batch the sink
// did not take, with exponential backoff, while the buffer keeps filling.
// The call being authorized never waits: when the buffer is full the
// decision is dropped and counted (palisade_decision_logs_dropped_total).
// The local decision log line is written as before, whatever the sink
// does.
//
// The input of each event is the document the authorizer decided on
// (authz.InputMask.AppendJSON): the token's claims and never the token,
// the request with proto field names, and never a request field marked
// debug_redact in its .proto; WithMask erases more. The package does not
// link OPA.
//
// A service wires it like this (the service kit does, from
// --decision-log-url, with Run as one of the service's own loops):
//
//	shipper, err := decisionlog.New(url, src,
//		decisionlog.WithMeterProvider(tel.MeterProvider()), decisionlog.WithLogger(logger),
//		decisionlog.WithLabels(map[string]string{"service": name}))
//	…
//	srv, err := rpc.NewServer(src, authorizer,
//		rpc.WithAuthorizationOptions(authz.WithDecisionHook(shipper.Hook)))
//	…
//	go shipper.Run(ctx) // returns nil once ctx is done and the buffer is sent
package decisionlog

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mathrand "math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// Path is the event's "path": the decision document of the framework's
// policy (data.palisade.authz.decision), as OPA names the path of a query.
const Path = "palisade/authz/decision"

// Defaults of the options.
const (
	DefaultBufferSize    = 16 << 20 // bytes of events waiting to be sent
	DefaultBatchSize     = 1 << 20  // bytes of events in one upload, before gzip
	DefaultFlushInterval = 2 * time.Second
	DefaultMinBackoff    = 500 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
)

const (
	// uploadTimeout bounds one upload, dial to response.
	uploadTimeout = 10 * time.Second
	// drainTimeout bounds the sending of what is buffered once Run's
	// context is done.
	drainTimeout = 5 * time.Second
	// maxResponseBytes is what is read of a sink's answer.
	maxResponseBytes = 64 << 10
)

// Reasons a decision is dropped, the "reason" of the dropped counter.
const (
	reasonBufferFull = "buffer_full" // the sink is behind or down, and the buffer is full
	reasonRefused    = "refused"     // the sink refused a batch for good (a 4xx other than 408 and 429)
	reasonShutdown   = "shutdown"    // still buffered when Run returned
)

// Option configures New.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	logger                 *slog.Logger
	meterProvider          metric.MeterProvider
	mask                   *authz.InputMask
	labels                 map[string]string
	clientOptions          []rpc.ClientOption
	bufferSize, batchSize  int
	flushInterval          time.Duration
	minBackoff, maxBackoff time.Duration
}

// WithLogger sets the logger (default slog.Default()) told when the sink
// fails and when delivery resumes.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l != nil {
			c.logger = l
		}
	})
}

// WithMeterProvider records the shipper's metrics with mp: decisions
// dropped by reason (palisade.decision_logs.dropped: buffer_full, refused,
// shutdown), decisions shipped, uploads by result (ok, error), and the
// bytes buffered. Use the service's (rpc.WithMeterProvider's).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.meterProvider = mp })
}

// WithMask erases mask's paths from the input of every event, beside the
// request fields marked debug_redact, which are always left out.
func WithMask(mask *authz.InputMask) Option {
	return optionFunc(func(c *config) { c.mask = mask })
}

// WithLabels adds labels to every event, beside "id" (this shipper's
// instance, random) and "version" (Palisade's), which they may replace:
// for example {"service": "usersvc"}.
func WithLabels(labels map[string]string) Option {
	return optionFunc(func(c *config) {
		if c.labels == nil {
			c.labels = map[string]string{}
		}
		for k, v := range labels {
			c.labels[k] = v
		}
	})
}

// WithClientOptions configures the HTTP client (rpc.NewHTTPClient) the
// batches are sent with: rpc.WithServerID to accept only a sink with that
// SPIFFE ID (otherwise any server of the trust domain whose certificate
// names the URL's host), rpc.WithTrustDomain, rpc.WithDialTimeout.
func WithClientOptions(opts ...rpc.ClientOption) Option {
	return optionFunc(func(c *config) { c.clientOptions = append(c.clientOptions, opts...) })
}

// WithBufferSize bounds the events waiting to be sent, in bytes of JSON
// (default DefaultBufferSize). A decision that does not fit is dropped.
func WithBufferSize(bytes int) Option {
	return optionFunc(func(c *config) { c.bufferSize = bytes })
}

// WithBatchSize sets the size of an upload, in bytes of JSON before gzip
// (default DefaultBatchSize): a batch is sent as soon as the buffer holds
// that much, and carries at most that much (or one event, if larger).
func WithBatchSize(bytes int) Option {
	return optionFunc(func(c *config) { c.batchSize = bytes })
}

// WithFlushInterval sets how long a decision may wait for its batch to
// fill before it is sent anyway (default DefaultFlushInterval).
func WithFlushInterval(d time.Duration) Option {
	return optionFunc(func(c *config) { c.flushInterval = d })
}

// WithBackoff sets the wait before retrying a batch the sink did not take:
// min after the first failure, doubling up to max, each wait drawn between
// half and all of that (defaults DefaultMinBackoff, DefaultMaxBackoff).
func WithBackoff(min, max time.Duration) Option {
	return optionFunc(func(c *config) { c.minBackoff, c.maxBackoff = min, max })
}

// Shipper buffers decisions and sends them to a decision log service. Hook
// is its authz.DecisionHook; Run sends.
type Shipper struct {
	url      string
	client   *http.Client
	cfg      config
	labels   []byte // the "labels" object, rendered once
	selfID   string // "requested_by": this workload
	log      *slog.Logger
	wake     chan struct{}
	stopped  atomic.Bool
	buffered atomic.Int64 // bytes, mirrors size for Hook's unlocked check

	mu    sync.Mutex
	queue [][]byte // events, oldest first; the first inFlight are being sent
	size  int      // bytes in queue

	dropped      metric.Int64Counter
	shipped      metric.Int64Counter
	uploads      metric.Int64Counter
	byReason     map[string][]metric.AddOption
	uploadOK     []metric.AddOption
	uploadFailed []metric.AddOption
	registration metric.Registration
}

// New returns a Shipper sending to url, which must be https: the batches
// go over mutual TLS with src's certificate, the sink verified against
// src's trust bundle. Nothing is sent until Run.
func New(sinkURL string, src mtls.Source, opts ...Option) (*Shipper, error) {
	cfg := config{
		logger: slog.Default(), meterProvider: metricnoop.NewMeterProvider(),
		bufferSize: DefaultBufferSize, batchSize: DefaultBatchSize, flushInterval: DefaultFlushInterval,
		minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff,
	}
	for _, o := range opts {
		o.apply(&cfg)
	}
	u, err := url.Parse(sinkURL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("decisionlog: sink URL: %w", err)
	case u.Scheme != "https":
		return nil, fmt.Errorf("decisionlog: sink URL %q: must be https (decisions are sent over mutual TLS only)", u.Redacted())
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("decisionlog: sink URL %q: no host", u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("decisionlog: sink URL %q: credentials in the URL (the sink authenticates the client certificate)", u.Redacted())
	case cfg.bufferSize <= 0 || cfg.batchSize <= 0:
		return nil, errors.New("decisionlog: buffer and batch sizes must be positive")
	case cfg.flushInterval <= 0 || cfg.minBackoff <= 0 || cfg.maxBackoff < cfg.minBackoff:
		return nil, errors.New("decisionlog: the flush interval and the backoff must be positive, the maximum backoff at least the minimum")
	}
	if src == nil {
		return nil, errors.New("decisionlog: no mtls.Source")
	}
	self, err := mtls.IdentityOf(src)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: %w", err)
	}
	client, err := rpc.NewHTTPClient(src, cfg.clientOptions...)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: %w", err)
	}
	// A redirect is not followed: the batch goes where it was configured to
	// go, or nowhere.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	s := &Shipper{
		url: u.String(), client: client, cfg: cfg, selfID: self.String(), log: cfg.logger,
		labels: renderLabels(cfg.labels), wake: make(chan struct{}, 1),
	}
	if err := s.instrument(cfg.meterProvider); err != nil {
		return nil, fmt.Errorf("decisionlog: metrics: %w", err)
	}
	return s, nil
}

func (s *Shipper) instrument(mp metric.MeterProvider) error {
	meter := mp.Meter("github.com/palisade-rpc/palisade/authz/decisionlog")
	var err error
	if s.dropped, err = meter.Int64Counter("palisade.decision_logs.dropped",
		metric.WithDescription("Decisions not shipped to the decision log service, by reason: buffer_full (the sink is behind or down), refused (the sink refused a batch for good), shutdown (still buffered at exit)."),
		metric.WithUnit("{decision}")); err != nil {
		return err
	}
	if s.shipped, err = meter.Int64Counter("palisade.decision_logs.shipped",
		metric.WithDescription("Decisions the decision log service accepted."),
		metric.WithUnit("{decision}")); err != nil {
		return err
	}
	if s.uploads, err = meter.Int64Counter("palisade.decision_logs.uploads",
		metric.WithDescription("Batches sent to the decision log service, by result: ok, or error (retried, or refused)."),
		metric.WithUnit("{batch}")); err != nil {
		return err
	}
	buffered, err := meter.Int64ObservableGauge("palisade.decision_logs.buffered",
		metric.WithDescription("Bytes of decisions waiting to be shipped."),
		metric.WithUnit("By"))
	if err != nil {
		return err
	}
	s.byReason = map[string][]metric.AddOption{}
	for _, r := range []string{reasonBufferFull, reasonRefused, reasonShutdown} {
		s.byReason[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", r)))}
	}
	s.uploadOK = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "ok")))}
	s.uploadFailed = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "error")))}
	s.registration, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(buffered, s.buffered.Load())
		return nil
	}, buffered)
	return err
}

// Hook is an authz.DecisionHook: it renders the decision as an event and
// buffers it, or drops and counts it when the buffer is full or Run has
// returned. It never waits for the sink.
func (s *Shipper) Hook(ctx context.Context, in *authz.Input, d authz.Decision, evalErr error) {
	if s.stopped.Load() {
		s.drop(ctx, reasonShutdown, 1)
		return
	}
	if s.buffered.Load() >= int64(s.cfg.bufferSize) {
		// Full: dropped before the event is rendered, so that a sink that is
		// down costs the calls nothing but this.
		s.drop(ctx, reasonBufferFull, 1)
		return
	}
	ev := s.event(ctx, in, d, evalErr)
	s.mu.Lock()
	if s.size+len(ev) > s.cfg.bufferSize {
		s.mu.Unlock()
		s.drop(ctx, reasonBufferFull, 1)
		return
	}
	s.queue = append(s.queue, ev)
	s.size += len(ev)
	s.buffered.Store(int64(s.size))
	full := s.size >= s.cfg.batchSize
	s.mu.Unlock()
	if full {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *Shipper) drop(ctx context.Context, reason string, n int) {
	s.dropped.Add(ctx, int64(n), s.byReason[reason]...)
}

// bufPool holds the buffers events are rendered in, before each is copied
// to one of its own size.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// event renders one decision as an OPA decision log event (EventV1).
func (s *Shipper) event(ctx context.Context, in *authz.Input, d authz.Decision, evalErr error) []byte {
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"labels":`...)
	b = append(b, s.labels...)
	b = append(b, `,"decision_id":`...)
	b = appendString(b, in.DecisionID)
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		b = append(b, `,"trace_id":"`...)
		b = append(b, sc.TraceID().String()...)
		b = append(b, `","span_id":"`...)
		b = append(b, sc.SpanID().String()...)
		b = append(b, '"')
	}
	if d.Revision != "" {
		b = append(b, `,"revision":`...)
		b = appendString(b, d.Revision)
	}
	b = append(b, `,"path":"`+Path+`"`...)
	mark := len(b)
	b = append(b, `,"input":`...)
	start := len(b)
	b, erased := s.cfg.mask.AppendJSON(b, in)
	if len(b) == start {
		b = b[:mark] // the mask erased the whole input
	}
	if evalErr != nil {
		b = append(b, `,"error":{"code":"eval_error","message":`...)
		b = appendString(b, evalErr.Error())
		b = append(b, '}')
	} else {
		b = append(b, `,"result":{"allow":`...)
		b = strconv.AppendBool(b, d.Allow)
		b = append(b, `,"reasons":[`...)
		for i, r := range d.Reasons {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, r)
		}
		b = append(b, `],"need_user":`...)
		b = strconv.AppendBool(b, d.NeedsUser)
		b = append(b, '}')
	}
	if len(erased) > 0 {
		b = append(b, `,"erased":[`...)
		for i, p := range erased {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, p)
		}
		b = append(b, ']')
	}
	b = append(b, `,"requested_by":`...)
	b = appendString(b, s.selfID)
	b = append(b, `,"timestamp":"`...)
	b = time.Now().UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if id, ok := rpc.RequestIDFromContext(ctx); ok {
		b = append(b, `,"custom":{"request_id":`...)
		b = appendString(b, id)
		b = append(b, '}')
	}
	b = append(b, '}')
	ev := slices.Clone(b)
	if cap(b) <= 64<<10 {
		*bp = b
		bufPool.Put(bp)
	}
	return ev
}

// Run sends the buffered decisions until ctx is done: a batch as soon as
// one is full, and whatever is buffered every flush interval. A batch the
// sink does not take (it cannot be reached, it is not who it should be, it
// answers 5xx, 408 or 429) is retried with backoff, the buffer filling
// meanwhile; one it refuses for good (another 4xx, or a redirect) is
// dropped and counted. Once ctx is done Run sends what is buffered for up
// to five seconds, counts the rest as dropped, and returns nil; decisions
// after that are dropped. Run once.
func (s *Shipper) Run(ctx context.Context) error {
	defer s.client.CloseIdleConnections()
	defer func() {
		if s.registration != nil {
			_ = s.registration.Unregister()
		}
	}()
	timer := time.NewTimer(s.cfg.flushInterval)
	defer timer.Stop()
	var failures int // consecutive failed uploads
	for {
		select {
		case <-ctx.Done():
			s.drain(ctx, failures)
			return nil
		case <-s.wake:
		case <-timer.C:
		}
		failures = s.flush(ctx, failures, false)
		timer.Reset(s.cfg.flushInterval)
	}
}

// flush sends batches until the buffer is empty, retrying with backoff,
// and returns the consecutive failures when it stops: when the buffer is
// empty or ctx is done. With once, a failure ends it instead.
func (s *Shipper) flush(ctx context.Context, failures int, once bool) int {
	var body bytes.Buffer
	for {
		if ctx.Err() != nil {
			return failures // stopped: drain or Run's end decides
		}
		n, size := s.next(&body)
		if n == 0 {
			return failures
		}
		for {
			status, err := s.upload(ctx, body.Bytes())
			if err == nil {
				s.uploads.Add(ctx, 1, s.uploadOK...)
				s.shipped.Add(ctx, int64(n))
				s.release(n, size)
				if failures > 0 {
					s.log.Info("decision log: delivery resumed", "url", s.url, "failed_uploads", failures)
				}
				failures = 0
				break
			}
			if ctx.Err() != nil {
				return failures // stopped mid-upload: drain or Run's end decides
			}
			s.uploads.Add(ctx, 1, s.uploadFailed...)
			failures++
			if permanent(status) {
				s.log.Error("decision log: the sink refused a batch; dropped", "url", s.url, "decisions", n, "error", err)
				s.drop(ctx, reasonRefused, n)
				s.release(n, size)
				break
			}
			if failures == 1 {
				s.log.Warn("decision log: upload failed; retrying with backoff while decisions buffer", "url", s.url, "error", err)
			} else {
				s.log.Debug("decision log: upload failed", "url", s.url, "failures", failures, "error", err)
			}
			if once {
				return failures
			}
			wait := time.NewTimer(s.backoff(failures))
			select {
			case <-ctx.Done():
				wait.Stop()
				return failures
			case <-wait.C:
			}
		}
	}
}

// drain sends what is buffered, for up to drainTimeout, stops taking
// decisions, and counts what is left as dropped.
func (s *Shipper) drain(ctx context.Context, failures int) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	defer cancel()
	for dctx.Err() == nil {
		if failures = s.flush(dctx, failures, true); failures > 0 || s.buffered.Load() == 0 {
			break
		}
	}
	s.stopped.Store(true)
	s.mu.Lock()
	left := len(s.queue)
	clear(s.queue)
	s.queue, s.size = nil, 0
	s.buffered.Store(0)
	s.mu.Unlock()
	if left > 0 {
		s.drop(ctx, reasonShutdown, left)
		s.log.Warn("decision log: decisions not shipped at shutdown", "url", s.url, "decisions", left)
	}
}

// next writes the next batch — the oldest events, up to the batch size or
// one — into body as a gzipped JSON array, and returns how many events and
// bytes it holds. The events stay buffered until release.
func (s *Shipper) next(body *bytes.Buffer) (n, size int) {
	s.mu.Lock()
	for n < len(s.queue) && (n == 0 || size+len(s.queue[n]) <= s.cfg.batchSize) {
		size += len(s.queue[n])
		n++
	}
	batch := slices.Clone(s.queue[:n])
	s.mu.Unlock()
	if n == 0 {
		return 0, 0
	}
	body.Reset()
	zw := gzip.NewWriter(body)
	_, _ = zw.Write([]byte{'['})
	for i, ev := range batch {
		if i > 0 {
			_, _ = zw.Write([]byte{','})
		}
		_, _ = zw.Write(ev)
	}
	_, _ = zw.Write([]byte{']'})
	_ = zw.Close() // writes to a bytes.Buffer do not fail
	return n, size
}

// release removes the first n events, size bytes, from the buffer.
func (s *Shipper) release(n, size int) {
	s.mu.Lock()
	clear(s.queue[:n])
	s.queue = s.queue[n:]
	s.size -= size
	s.buffered.Store(int64(s.size))
	s.mu.Unlock()
}

// upload POSTs one gzipped batch. It returns the response status (0 when
// there was none) and an error unless the sink took the batch (2xx).
func (s *Shipper) upload(ctx context.Context, body []byte) (int, error) {
	// An upload in flight when ctx ends may still finish, for up to
	// drainTimeout: canceled, a batch the sink had already taken would be
	// sent again by drain, and arrive twice.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	if d, ok := ctx.Deadline(); ok {
		var cancelDeadline context.CancelFunc
		base, cancelDeadline = context.WithDeadline(base, d)
		defer cancelDeadline()
	}
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(drainTimeout, cancelBase) })
	defer stop()
	ctx, cancel := context.WithTimeout(base, uploadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("User-Agent", "palisade-decisionlog")
	res, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxResponseBytes))
	_ = res.Body.Close()
	if res.StatusCode/100 != 2 {
		return res.StatusCode, fmt.Errorf("sink answered %s", res.Status)
	}
	return res.StatusCode, nil
}

// permanent reports whether a batch answered with status will never be
// taken: a 3xx (redirects are not followed) or a 4xx other than 408 and
// 429. No answer, a 5xx, 408 and 429 are worth retrying.
func permanent(status int) bool {
	switch {
	case status == 0, status >= 500, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return false
	}
	return status >= 300
}

// backoff is the wait after the failures-th failure in a row: min doubled
// failures-1 times, at most max, drawn between half and all of that.
func (s *Shipper) backoff(failures int) time.Duration {
	d := s.cfg.maxBackoff
	if failures < 32 {
		if b := s.cfg.minBackoff << (failures - 1); b > 0 && b < d {
			d = b
		}
	}
	return d/2 + mathrand.N(d/2+1)
}

// renderLabels renders the "labels" object: id, version, then labels.
func renderLabels(extra map[string]string) []byte {
	labels := map[string]string{"id": instanceID(), "version": version()}
	for k, v := range extra {
		labels[k] = v
	}
	b := []byte{'{'}
	for i, k := range slices.Sorted(maps.Keys(labels)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, labels[k])
	}
	return append(b, '}')
}

func instanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// version is Palisade's module version in this binary, "(devel)" when it
// is the main module.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	const module = "github.com/palisade-rpc/palisade"
	if info.Main.Path == module {
		return info.Main.Version
	}
	for _, m := range info.Deps {
		if m.Path == module {
			return m.Version
		}
	}
	return "unknown"
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
