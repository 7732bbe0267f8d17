package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/security"
)

// Interceptor authorizes calls with an Authorizer. It implements all three
// methods of connect.Interceptor: unary calls are decided with their request
// message, streams when they open, and, for procedures named with
// WithPerMessage, every message a client sends on a stream.
//
// Anything but a decision with Allow set denies the call (fail closed).
type Interceptor struct {
	authz      Authorizer
	log        *slog.Logger
	perMessage map[string]bool
	ids        *idSource
}

var _ connect.Interceptor = (*Interceptor)(nil)

// InterceptorOption configures an Interceptor.
type InterceptorOption interface {
	apply(*Interceptor)
}

type interceptorOptionFunc func(*Interceptor)

func (f interceptorOptionFunc) apply(i *Interceptor) { f(i) }

// WithLogger sets the logger denials and evaluation errors go to.
func WithLogger(l *slog.Logger) InterceptorOption {
	return interceptorOptionFunc(func(i *Interceptor) { i.log = l })
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

// NewInterceptor returns an Interceptor deciding with authz.
func NewInterceptor(authz Authorizer, opts ...InterceptorOption) *Interceptor {
	i := &Interceptor{authz: authz, log: slog.Default(), perMessage: map[string]bool{}, ids: newIDSource()}
	for _, o := range opts {
		o.apply(i)
	}
	return i
}

// WrapUnary implements connect.Interceptor.
func (i *Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		msg, _ := req.Any().(proto.Message)
		if err := i.authorize(ctx, req.Spec(), req.Peer(), req.HTTPMethod(), msg); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
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
		if err := i.authorize(ctx, spec, conn.Peer(), method, nil); err != nil {
			return err
		}
		if i.perMessage[spec.Procedure] && (spec.StreamType == connect.StreamTypeClient || spec.StreamType == connect.StreamTypeBidi) {
			conn = &authorizingConn{StreamingHandlerConn: conn, ctx: ctx, i: i, method: method}
		}
		return next(ctx, conn)
	}
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
	id := i.ids.next()
	principal, ok := security.FromContext(ctx)
	if !ok {
		// Unreachable behind a Palisade server; deny rather than guess.
		i.log.ErrorContext(ctx, "authorization without a principal", "decision_id", id, "procedure", spec.Procedure)
		return connect.NewError(connect.CodeUnauthenticated, errors.New("unauthenticated"))
	}
	service, m := SplitProcedure(spec.Procedure)
	in := &Input{
		DecisionID: id,
		Procedure:  spec.Procedure,
		Service:    service,
		Method:     m,
		StreamType: StreamTypeName(spec.StreamType),
		Principal:  principal,
		Request:    msg,
		HTTPMethod: method,
		Protocol:   peer.Protocol,
	}
	d, err := i.authz.Decide(ctx, in)
	if err != nil {
		i.log.ErrorContext(ctx, "authorization failed; denying",
			"decision_id", id, "procedure", spec.Procedure, "peer", principal.Workload.ID.String(), "error", err)
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied (decision %s)", id))
	}
	if d.Allow {
		return nil
	}
	i.log.InfoContext(ctx, "call denied",
		"decision_id", id, "procedure", spec.Procedure, "peer", principal.Workload.ID.String(), "reasons", d.Reasons)
	if principal.User == nil {
		// The caller presented no token: report that a user must authenticate
		// (401) rather than that this user may not (403).
		err := connect.NewError(connect.CodeUnauthenticated, errors.New(authenticationMessage(id, d.Reasons)))
		err.Meta().Set("WWW-Authenticate", "Bearer")
		return err
	}
	return connect.NewError(connect.CodePermissionDenied, errors.New(DenialMessage(id, d.Reasons)))
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
