package authz

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/security"
)

// Interceptor authorizes calls with an Authorizer. It implements all three
// methods of connect.Interceptor: unary calls are decided with their request
// message (or, with a PreRequestAuthorizer, before it is read: see
// DecideBeforeRequest), streams when they open, and, for procedures named
// with WithPerMessage, every message a client sends on a stream.
//
// Anything but a decision with Allow set denies the call (fail closed).
type Interceptor struct {
	authorizer Authorizer
	log        *slog.Logger
	decisions  *slog.Logger
	perMessage map[string]bool
	ids        *idSource
	hooks      []DecisionHook
	logInput   bool       // WithDecisionLogInput
	inputMask  *InputMask // what the logged input leaves out
}

var _ connect.Interceptor = (*Interceptor)(nil)

// InterceptorOption configures an Interceptor.
type InterceptorOption interface {
	apply(*Interceptor)
}

type interceptorOptionFunc func(*Interceptor)

func (f interceptorOptionFunc) apply(i *Interceptor) { f(i) }

// WithLogger sets the logger evaluation errors go to (and decisions, unless
// WithDecisionLogger names another).
func WithLogger(l *slog.Logger) InterceptorOption {
	return interceptorOptionFunc(func(i *Interceptor) { i.log = l })
}

// WithDecisionLogger sets the logger of the decision log: one line per
// decision ("decision") with its id, the procedure, the peer, the subject and
// actor, allow, the reasons, the evaluation time and the policy revision
// (and, with WithDecisionLogInput, the input).
func WithDecisionLogger(l *slog.Logger) InterceptorOption {
	return interceptorOptionFunc(func(i *Interceptor) { i.decisions = l })
}

// WithDecisionLogInput adds the input document to each decision log line
// ("input"), so that a denial can be replayed with `palisade policy eval`:
// the document the authorizer decided on (InputMask.AppendJSON), less the
// request fields marked sensitive in their .proto (debug_redact) and the
// paths mask erases (nil: the sensitive fields only). The paths erased from
// an input are listed under "erased". Off by default: a request can hold
// personal data that the log's readers need not see. With a JSON log
// handler the input is a JSON object; with a text one, a quoted string.
func WithDecisionLogInput(mask *InputMask) InterceptorOption {
	return interceptorOptionFunc(func(i *Interceptor) { i.logInput, i.inputMask = true, mask })
}

// WithPerMessage makes the client- and bidi-streaming procedures named
// authorize each message the client sends, with the message as the input's
// Request, in addition to the decision taken when the stream opens.
func WithPerMessage(procedures ...string) InterceptorOption {
	return interceptorOptionFunc(func(i *Interceptor) {
		for _, p := range procedures {
			i.perMessage[p] = true
		}
	})
}

// DecisionHook is told of every decision an Interceptor takes — call-level,
// per-message and resource-level — after it is logged: in carries the
// decision id, d the answer (Allow false when evalErr is set). Hooks run on
// the call's goroutine and must be quick; telemetry uses them to count
// decisions and to record them on the call's trace span.
type DecisionHook func(ctx context.Context, in *Input, d Decision, evalErr error)

// WithDecisionHook adds a hook told of every decision.
func WithDecisionHook(h DecisionHook) InterceptorOption {
	return interceptorOptionFunc(func(i *Interceptor) {
		if h != nil {
			i.hooks = append(i.hooks, h)
		}
	})
}

// NewInterceptor returns an Interceptor deciding with authorizer.
func NewInterceptor(authorizer Authorizer, opts ...InterceptorOption) *Interceptor {
	i := &Interceptor{authorizer: authorizer, log: slog.Default(), perMessage: map[string]bool{}, ids: newIDSource()}
	for _, o := range opts {
		o.apply(i)
	}
	if i.decisions == nil {
		i.decisions = i.log
	}
	return i
}

// WrapUnary implements connect.Interceptor. A call that DecideBeforeRequest
// already allowed is not decided again: its decision is logged now, under
// the call's span, and the call goes on.
func (i *Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		msg, _ := req.Any().(proto.Message)
		if c, ok := ctx.Value(callKey{}).(*call); ok && c.early != decided && c.i == i && c.sameCall(ctx, req) {
			if err := i.finishEarly(ctx, c, msg); err != nil {
				return nil, err
			}
			return next(ctx, req)
		}
		c, err := i.open(ctx, req.Spec(), req.Peer(), req.HTTPMethod(), msg)
		if err != nil {
			return nil, err
		}
		return next(context.WithValue(ctx, callKey{}, c), req)
	}
}

// DecideBeforeRequest takes the call-level decision of a unary call once
// its headers are in, before its request message is read, for an
// Authorizer that implements PreRequestAuthorizer and says it is worth it.
// The input is the one WrapUnary would build, without Request.
//
// When the Authorizer answers that the request does not matter
// (Decision.IgnoresRequest), the answer is final. A denial is returned as
// the error for the caller — the same 401 or 403, message, decision id and
// decision log line as a denial by WrapUnary — and the server sends it
// without reading the body. An allow is kept in the returned context, where
// WrapUnary finds it: the call is decided once, and its decision logged
// when WrapUnary sees the call. Otherwise (the request may matter, the
// Authorizer failed, or it was not asked) nothing is logged and WrapUnary
// decides with the request, under the same decision id.
//
// Streams are not decided here (ctx is returned as is): WrapStreamingHandler
// decides them when they open, before any message is read. The server
// calls this from its request gate (connect.WithRequestGate), with the
// Principal in ctx; without one it leaves the call to WrapUnary, which
// denies it.
func (i *Interceptor) DecideBeforeRequest(ctx context.Context, spec connect.Spec, peer connect.Peer, httpMethod string) (context.Context, error) {
	if spec.IsClient || spec.StreamType != connect.StreamTypeUnary {
		return ctx, nil
	}
	early, ok := i.authorizer.(PreRequestAuthorizer)
	if !ok || !early.DecidesBeforeRequest() {
		return ctx, nil
	}
	principal, ok := security.FromContext(ctx)
	if !ok {
		return ctx, nil
	}
	service, m := SplitProcedure(spec.Procedure)
	c := &call{i: i, early: earlyNeedsRequest, input: Input{
		DecisionID: i.ids.next(),
		Procedure:  spec.Procedure, Service: service, Method: m, StreamType: StreamTypeName(spec.StreamType),
		Principal: principal, HTTPMethod: httpMethod, Protocol: peer.Protocol,
	}}
	d, elapsed, err := i.evaluate(ctx, &c.input)
	switch {
	case err != nil || !d.IgnoresRequest:
		// Decided with the request; the call record waits in ctx for it.
	case d.Allow:
		c.early, c.decision, c.elapsed = earlyAllowed, d, elapsed
	default:
		return ctx, i.conclude(ctx, &c.input, d, elapsed, nil)
	}
	return context.WithValue(ctx, callKey{}, c), nil
}

// finishEarly completes the decision of a call DecideBeforeRequest began:
// it logs the early allow, or decides with the request msg.
func (i *Interceptor) finishEarly(ctx context.Context, c *call, msg proto.Message) error {
	var err error
	if c.early == earlyAllowed {
		err = i.conclude(ctx, &c.input, c.decision, c.elapsed, nil)
	} else {
		c.input.Request = msg
		d, elapsed, evalErr := i.evaluate(ctx, &c.input)
		err = i.conclude(ctx, &c.input, d, elapsed, evalErr)
	}
	c.early, c.decision = decided, Decision{}
	c.input.Request, c.input.DecisionID = nil, ""
	return err
}

// WrapStreamingClient implements connect.Interceptor; clients are not authorized here.
func (i *Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (i *Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		spec := conn.Spec()
		method := httpMethod(ctx)
		c, err := i.open(ctx, spec, conn.Peer(), method, nil)
		if err != nil {
			return err
		}
		ctx = context.WithValue(ctx, callKey{}, c)
		if i.perMessage[spec.Procedure] && (spec.StreamType == connect.StreamTypeClient || spec.StreamType == connect.StreamTypeBidi) {
			conn = &authorizingConn{StreamingHandlerConn: conn, ctx: ctx, i: i, method: method}
		}
		return next(ctx, conn)
	}
}

// NewCallContext returns ctx carrying a call of procedure (unary) decided by
// authorizer, for code that calls a handler directly — tests, in-process
// composition — so that the handler's AuthorizeResource works. The caller
// is the Principal in ctx.
func NewCallContext(ctx context.Context, authorizer Authorizer, procedure string, opts ...InterceptorOption) context.Context {
	return NewInterceptor(authorizer, opts...).withCall(ctx, connect.Spec{Procedure: procedure, StreamType: connect.StreamTypeUnary}, connect.Peer{}, "POST")
}

// open takes the call-level decision of a call (with its request message,
// for a unary call) and returns the call record that AuthorizeResource
// reads: one allocation serves both, the decision's input being the
// record's, with the request cleared after the decision.
func (i *Interceptor) open(ctx context.Context, spec connect.Spec, peer connect.Peer, method string, msg proto.Message) (*call, error) {
	principal, ok := security.FromContext(ctx)
	if !ok {
		// Unreachable behind a Palisade server; deny rather than guess.
		i.log.ErrorContext(ctx, "authorization without a principal", "procedure", spec.Procedure)
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("unauthenticated"))
	}
	service, m := SplitProcedure(spec.Procedure)
	c := &call{i: i, input: Input{
		Procedure: spec.Procedure, Service: service, Method: m, StreamType: StreamTypeName(spec.StreamType),
		Principal: principal, Request: msg, HTTPMethod: method, Protocol: peer.Protocol,
	}}
	// Authorizers and hooks must not keep the input past Decide (hooks run
	// on the call's goroutine); resource decisions copy it.
	if err := i.decide(ctx, &c.input); err != nil {
		return nil, err
	}
	c.input.Request, c.input.DecisionID = nil, ""
	return c, nil
}

// withCall records the call in ctx for AuthorizeResource.
func (i *Interceptor) withCall(ctx context.Context, spec connect.Spec, peer connect.Peer, method string) context.Context {
	principal, _ := security.FromContext(ctx)
	service, m := SplitProcedure(spec.Procedure)
	return context.WithValue(ctx, callKey{}, &call{i: i, input: Input{
		Procedure: spec.Procedure, Service: service, Method: m, StreamType: StreamTypeName(spec.StreamType),
		Principal: principal, HTTPMethod: method, Protocol: peer.Protocol,
	}})
}

func httpMethod(ctx context.Context) string {
	if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
		return info.HTTPMethod()
	}
	return "POST"
}

type authorizingConn struct {
	connect.StreamingHandlerConn
	ctx    context.Context
	i      *Interceptor
	method string
}

func (c *authorizingConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	m, _ := msg.(proto.Message)
	return c.i.authorize(c.ctx, c.Spec(), c.Peer(), c.method, m)
}

func (i *Interceptor) authorize(ctx context.Context, spec connect.Spec, peer connect.Peer, method string, msg proto.Message) error {
	principal, ok := security.FromContext(ctx)
	if !ok {
		// Unreachable behind a Palisade server; deny rather than guess.
		i.log.ErrorContext(ctx, "authorization without a principal", "procedure", spec.Procedure)
		return connect.NewError(connect.CodeUnauthenticated, errors.New("unauthenticated"))
	}
	service, m := SplitProcedure(spec.Procedure)
	in := &Input{
		Procedure:  spec.Procedure,
		Service:    service,
		Method:     m,
		StreamType: StreamTypeName(spec.StreamType),
		Principal:  principal,
		Request:    msg,
		HTTPMethod: method,
		Protocol:   peer.Protocol,
	}
	return i.decide(ctx, in)
}

// decide asks the authorizer, logs the decision and turns a denial into the
// error the caller sees.
func (i *Interceptor) decide(ctx context.Context, in *Input) error {
	in.DecisionID = i.ids.next()
	d, elapsed, err := i.evaluate(ctx, in)
	return i.conclude(ctx, in, d, elapsed, err)
}

// evaluate asks the authorizer about in, and times it.
func (i *Interceptor) evaluate(ctx context.Context, in *Input) (Decision, time.Duration, error) {
	start := time.Now()
	d, err := i.authorizer.Decide(ctx, in)
	return d, time.Since(start), err
}

// conclude logs the decision d the authorizer took on in (or its failure,
// err), tells the hooks, and turns a denial into the error the caller sees.
func (i *Interceptor) conclude(ctx context.Context, in *Input, d Decision, elapsed time.Duration, err error) error {
	if err != nil {
		i.log.ErrorContext(ctx, "authorization failed; denying",
			"decision_id", in.DecisionID, "procedure", in.Procedure, "peer", in.Principal.Workload.ID.String(), "error", err)
		d = Decision{Allow: false, Revision: d.Revision}
	}
	i.logDecision(ctx, in, d, elapsed, err)
	for _, h := range i.hooks {
		h(ctx, in, d, err)
	}
	if d.Allow {
		return nil
	}
	if err != nil {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied (decision %s)", in.DecisionID))
	}
	if in.Principal.User == nil && d.NeedsUser {
		// The caller presented no token and the procedure needs a user:
		// report that a user must authenticate (401) rather than that this
		// caller may not (403).
		err := connect.NewError(connect.CodeUnauthenticated, errors.New(authenticationMessage(in.DecisionID, d.Reasons)))
		err.Meta().Set("WWW-Authenticate", "Bearer")
		return err
	}
	return connect.NewError(connect.CodePermissionDenied, errors.New(DenialMessage(in.DecisionID, d.Reasons)))
}

// logDecision writes the decision log line: who asked for what, the answer
// and why, how long it took, and which policy gave it. Never a token.
func (i *Interceptor) logDecision(ctx context.Context, in *Input, d Decision, elapsed time.Duration, evalErr error) {
	level := slog.LevelInfo
	if evalErr != nil {
		level = slog.LevelError
	}
	if !i.decisions.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.String("decision_id", in.DecisionID),
		slog.String("procedure", in.Procedure),
		slog.String("peer", in.Principal.Workload.ID.String()),
	)
	if u := in.Principal.User; u != nil {
		attrs = append(attrs, slog.String("subject", u.Subject))
		if u.Actor != "" {
			attrs = append(attrs, slog.String("act", u.Actor))
		}
	}
	if in.Resource != nil {
		attrs = append(attrs, slog.String("resource", in.Resource.Kind+"/"+in.Resource.ID))
	}
	if in.Request != nil && in.StreamType != "unary" {
		attrs = append(attrs, slog.Bool("message", true))
	}
	attrs = append(attrs,
		slog.Bool("allow", d.Allow),
		slog.Any("reasons", d.Reasons),
		slog.Int64("eval_us", elapsed.Microseconds()),
		slog.String("policy_revision", d.Revision),
	)
	if evalErr != nil {
		attrs = append(attrs, slog.String("error", evalErr.Error()))
	}
	if i.logInput {
		doc, erased := i.inputMask.AppendJSON(nil, in)
		if len(doc) > 0 {
			attrs = append(attrs, slog.Any("input", json.RawMessage(doc)))
		}
		if len(erased) > 0 {
			attrs = append(attrs, slog.Any("erased", erased))
		}
	}
	i.decisions.LogAttrs(ctx, level, "decision", attrs...)
}

type callKey struct{}

// call is what a resource-level decision needs of the call in progress,
// and, between DecideBeforeRequest and WrapUnary, the decision begun before
// the request was read.
type call struct {
	i     *Interceptor
	input Input // the call-level input, without the request message
	early earlyState
	// decision and elapsed are the early allow, while early is earlyAllowed.
	decision Decision
	elapsed  time.Duration
}

// earlyState is where the call-level decision of a call stands.
type earlyState uint8

const (
	decided           earlyState = iota // taken (and logged) by the interceptor
	earlyAllowed                        // allowed before the request was read; logged by WrapUnary
	earlyNeedsRequest                   // to be decided by WrapUnary, with the request
)

// sameCall reports whether req is the call DecideBeforeRequest began c
// for: same procedure, protocol and HTTP method, and same caller. Anything
// else is decided afresh.
func (c *call) sameCall(ctx context.Context, req connect.AnyRequest) bool {
	p, _ := security.FromContext(ctx)
	return p != nil && p == c.input.Principal && c.input.Procedure == req.Spec().Procedure &&
		c.input.Protocol == req.Peer().Protocol && c.input.HTTPMethod == req.HTTPMethod()
}

// AuthorizeResource asks the authorizer of the call in ctx whether its
// caller may act on r, for decisions that need a stored resource (an
// order's owner) that the call-level decision could not see. It returns
// nil when allowed, and otherwise the permission_denied (or, without a
// token, unauthenticated) error to return. Outside a call authorized by an
// Interceptor it denies.
func AuthorizeResource(ctx context.Context, r Resource) error {
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok || c.input.Principal == nil || c.early != decided {
		// No call, or one whose call-level decision was never completed.
		return connect.NewError(connect.CodePermissionDenied, errors.New("permission denied: no authorizer for this call"))
	}
	in := c.input
	in.Resource = &r
	return c.i.decide(ctx, &in)
}

// DenialMessage is the message a denied caller sees: the decision id and the
// reasons the policy chose to expose.
func DenialMessage(decisionID string, reasons []string) string {
	if len(reasons) == 0 {
		return "permission denied (decision " + decisionID + ")"
	}
	return "permission denied (decision " + decisionID + "): " + strings.Join(reasons, "; ")
}

// authenticationMessage is what a caller without a token sees on denial.
func authenticationMessage(decisionID string, reasons []string) string {
	msg := "authentication required: call with a user token (decision " + decisionID + ")"
	if len(reasons) > 0 {
		msg += ": " + strings.Join(reasons, "; ")
	}
	return msg
}

// idSource hands out decision ids: a random per-process prefix and a counter,
// unique without a syscall per call.
type idSource struct {
	prefix string
	n      atomic.Uint64
}

func newIDSource() *idSource {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return &idSource{prefix: hex.EncodeToString(b[:])}
}

func (s *idSource) next() string {
	return s.prefix + "-" + strconv.FormatUint(s.n.Add(1), 10)
}
