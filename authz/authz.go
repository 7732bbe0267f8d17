// Package authz is the authorization contract of a Palisade server. An
// Authorizer decides on an Input describing the call (procedure, stream
// type, the calling principal, the request message); NewInterceptor turns
// it into a connect.Interceptor that covers unary calls and every kind of
// stream, fails closed, and writes the decision log.
//
// The package holds the contract and the machinery around it, not a policy
// language: AllowList is a static Authorizer for tests and small
// deployments, and package policy provides the Open Policy Agent engine the
// sample services use. A server that authorizes with an AllowList does not
// link OPA.
//
// Decisions that need a stored resource: the call-level decision sees the
// request, not the database. A handler that must know, say, an order's
// owner loads the resource and calls AuthorizeResource, which asks the same
// authorizer again with the Input's Resource = {kind, id, owner}.
//
// Decisions before the request is read: a server should not read a
// request body (up to the message limit) only to refuse a caller it could
// have refused from its headers. For a unary call, Palisade's server asks
// the decision once the headers are in (Interceptor.DecideBeforeRequest),
// with an input that has no request, and the authorizer says whether the
// request could change the answer (Decision.IgnoresRequest). If it could
// not, that answer is final: a denial is sent before a byte of the body is
// read, and an allow is the call's decision, taken once. If it could, or
// the authorizer does not say, the call is decided as before, with its
// request, and the early answer is dropped unseen: an early allow can only
// become final where the authorizer vouches that the request does not
// matter. Streams are decided when they open, before any message is read,
// as always. Authorizers take part only if they implement
// PreRequestAuthorizer (AllowList always does; policy.Engine does when its
// policy mentions request_needed).
package authz

import (
	"context"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/security"
)

// Input is what a decision is made on. It mirrors the policy input document
// (DESIGN.md, "Policy input"); it never holds a secret (no raw token, no
// password).
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
	// when a stream is authorized message by message; nil when a stream
	// opens, and when a unary call is decided before its request is read
	// (see PreRequestAuthorizer).
	Request proto.Message
	// Resource is set in a resource-level decision (AuthorizeResource).
	Resource *Resource
	// HTTPMethod is "POST" or "GET"; Protocol is "connect", "grpc" or "grpcweb".
	HTTPMethod, Protocol string
}

// Decision is an Authorizer's answer.
type Decision struct {
	// Allow is true only when the call may proceed.
	Allow bool
	// Reasons explain the decision. They are shown to a denied caller, so a
	// policy must only put there what a caller may learn.
	Reasons []string
	// NeedsUser marks a denial that a user token would have changed (the
	// procedure acts for a user). A caller that presented no token is then
	// told to authenticate (unauthenticated, 401) rather than that it may not
	// (permission_denied, 403). Rego policies (package policy) set it with
	// "need_user": true.
	NeedsUser bool
	// IgnoresRequest, in a decision asked for before the request was read
	// (Input.Request nil, see PreRequestAuthorizer), says that no request
	// message could change this decision — not its Allow, Reasons or
	// NeedsUser — so it is final. False, the zero value, means the request
	// may matter: the call is decided again with it. Rego policies (package
	// policy) set it with "request_needed": false. Ignored in any other
	// decision.
	IgnoresRequest bool
	// Revision identifies the policy that decided, for the decision log.
	Revision string
}

// Authorizer decides whether a call may proceed. An error means no decision
// could be made, and the call is denied. Decide must not keep in (or what it
// points to) after it returns: the interceptor reuses it.
type Authorizer interface {
	Decide(ctx context.Context, in *Input) (Decision, error)
}

// PreRequestAuthorizer is an Authorizer that can decide unary calls before
// their request message is read. When DecidesBeforeRequest reports true,
// the server asks Decide once a unary call's headers are in, with no
// Request, and takes the answer as final if it sets IgnoresRequest;
// otherwise it asks again once the request is read. An Authorizer that
// does not implement this interface is only asked with the request.
type PreRequestAuthorizer interface {
	Authorizer
	// DecidesBeforeRequest reports whether asking before the request is
	// worth an evaluation: whether Decide may answer with IgnoresRequest.
	DecidesBeforeRequest() bool
}

// Resource is what a resource-level decision is about: the handler loaded
// the resource a call names and asks whether the caller may act on it.
type Resource struct {
	Kind, ID, Owner string
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
