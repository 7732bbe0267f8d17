package bench

// ConfigGRPCGoPalisade measures what serving the gRPC protocol with grpc-go's
// HTTP/2 transport would buy (issue 16): Palisade's own parts of the chain —
// the Principal from the verified certificate (security.WorkloadFromChains),
// the token verifier with its cache (security/token), the OPA engine with its
// decision cache, asked before and, if the policy needs it, with the request
// (policy.Engine), protovalidate — called from a grpc-go unary interceptor.
// It is a prototype for measurement, not a serving path: it has no access
// log, metrics, request ids, rate limits or stream guards, and it maps
// refusals to codes without Palisade's messages; a production version would
// share one transport-neutral chain with the Connect handlers (see README,
// Performance).

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"buf.build/go/protovalidate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/user"
)

// palisadeOnGRPC is ConfigGRPCGoPalisade's interceptor.
type palisadeOnGRPC struct {
	verifier *token.Verifier
	engine   *policy.Engine
	v        protovalidate.Validator
}

// newPalisadeOnGRPC builds the chain's parts as a Palisade server of
// ConfigFull does.
func newPalisadeOnGRPC(sf *serverFixture) (*palisadeOnGRPC, error) {
	verifier, err := sf.verifier()
	if err != nil {
		return nil, err
	}
	bundle, err := policy.LoadFS(user.Policy(), "services/user/policy")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	engine, err := policy.NewEngine(context.Background(), bundle, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("bench: protovalidate: %w", err)
	}
	return &palisadeOnGRPC{verifier: verifier, engine: engine, v: v}, nil
}

// intercept runs the chain's parts, then the handler.
func (p *palisadeOnGRPC) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no TLS")
	}
	w, err := security.WorkloadFromChains(ti.State.VerifiedChains, trustDomain)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, "bad client certificate")
	}
	principal := &security.Principal{Workload: w}
	raw, err := bearerOf(ctx)
	if err != nil {
		return nil, err
	}
	if raw != "" {
		u, err := p.verifier.Verify(ctx, raw, w)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, "invalid token")
		}
		principal.User, principal.Token = u, security.NewSecret(raw)
	}
	ctx = security.NewContext(ctx, principal)
	service, method := authz.SplitProcedure(info.FullMethod)
	in := authz.Input{Procedure: info.FullMethod, Service: service, Method: method, StreamType: "unary",
		Principal: principal, HTTPMethod: "POST", Protocol: "grpc"}
	d, err := p.engine.Decide(ctx, &in)
	if err != nil {
		return nil, status.Error(codes.Internal, "policy")
	}
	if !d.IgnoresRequest {
		in.Request, _ = req.(proto.Message)
		d, err = p.engine.Decide(ctx, &in)
		if err != nil {
			return nil, status.Error(codes.Internal, "policy")
		}
	}
	if !d.Allow {
		if principal.User == nil {
			return nil, status.Error(codes.Unauthenticated, strings.Join(d.Reasons, "; "))
		}
		return nil, status.Error(codes.PermissionDenied, strings.Join(d.Reasons, "; "))
	}
	if m, ok := req.(proto.Message); ok {
		if err := p.v.Validate(m); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return handler(ctx, req)
}
