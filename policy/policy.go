// Package policy authorizes every call. An Authorizer decides on an Input
// describing the call (procedure, stream type, the calling principal, the
// request message); NewInterceptor turns it into a connect.Interceptor that
// covers unary calls and every kind of stream, fails closed, and writes the
// decision log.
//
// Engine is the Authorizer the services use: Open Policy Agent, embedded,
// evaluating data.palisade.authz.decision against the rego in policy/rego
// (or a directory or an OPA bundle), reloaded only after a new policy
// compiles and passes its own tests. A policy version that carries no test
// is refused too (ErrUntested), unless EngineOptions.AllowUntested says
// otherwise. Engine.Watch polls the source; a source it cannot read, and a
// version it refused, are tried again with backoff while the last good
// policy keeps deciding.
//
// Decisions that need a stored resource: the call-level decision sees the
// request, not the database. A handler that must know, say, an order's
// owner loads the resource and calls AuthorizeResource, which asks the same
// authorizer again with input.resource = {kind, id, owner}; the default
// policy's GetOrder rules use it.
package policy

import (
	"context"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/security"
)

// Input is what a decision is made on. It mirrors the policy input document
// of DESIGN.md; it never holds a secret (no raw token, no password).
type Input struct {
	// DecisionID is the id the decision will be logged and reported under.
	DecisionID string
	// Procedure is the full procedure, "/user.v1.UserService/GetUser".
	Procedure string
	// Service and Method split Procedure: "user.v1.UserService", "GetUser".
	Service, Method string
	// StreamType is "unary", "client_stream", "server_stream" or "bidi_stream".
	StreamType string
	// Principal is the caller.
	Principal *security.Principal
	// Request is the request message of a unary call, or the received message
	// when a stream is authorized message by message; nil when a stream opens.
	Request proto.Message
	// Resource is set in a resource-level decision (AuthorizeResource).
	Resource *Resource
	// HTTPMethod is "POST" or "GET"; Protocol is "connect", "grpc" or "grpcweb".
	HTTPMethod, Protocol string
}

// Decision is an Authorizer's answer.
type Decision struct {
	// ID identifies the decision in logs and in the error a denied caller sees.
	ID string
	// Allow is true only when the call may proceed.
	Allow bool
	// Reasons explain the decision. They are shown to a denied caller, so a
	// policy must only put there what a caller may learn.
	Reasons []string
	// NeedsUser marks a denial that a user token would have changed (the
	// procedure acts for a user). A caller that presented no token is then
	// told to authenticate (unauthenticated, 401) rather than that it may not
	// (permission_denied, 403). Policies set it with "need_user": true.
	NeedsUser bool
	// Revision identifies the policy that decided, for the decision log.
	Revision string
}

// Authorizer decides whether a call may proceed. An error means no decision
// could be made, and the call is denied. Decide must not keep in (or what it
// points to) after it returns: the interceptor reuses it.
type Authorizer interface {
	Decide(ctx context.Context, in *Input) (Decision, error)
}

// AuthorizerFunc adapts a function to the Authorizer interface.
type AuthorizerFunc func(ctx context.Context, in *Input) (Decision, error)

// Decide implements Authorizer.
func (f AuthorizerFunc) Decide(ctx context.Context, in *Input) (Decision, error) { return f(ctx, in) }

// StreamTypeName returns the policy's name for a connect.StreamType.
func StreamTypeName(t connect.StreamType) string {
	switch t {
	case connect.StreamTypeUnary:
		return "unary"
	case connect.StreamTypeClient:
		return "client_stream"
	case connect.StreamTypeServer:
		return "server_stream"
	case connect.StreamTypeBidi:
		return "bidi_stream"
	}
	return "unknown"
}

// SplitProcedure splits "/pkg.Service/Method" into "pkg.Service" and "Method".
func SplitProcedure(procedure string) (service, method string) {
	p := strings.TrimPrefix(procedure, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return p, ""
}
