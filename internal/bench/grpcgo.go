package bench

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/rego"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
)

// startGRPCGo starts ConfigGRPCGo: a grpc-go server with mTLS and the
// straightforward chain in a unary interceptor, and grpc-go clients.
func startGRPCGo(ctx context.Context, fx *fixture, o Options) (*target, error) {
	t := &target{config: ConfigGRPCGo, tokens: true, calls: map[string][]getUserFunc{}, noCert: map[string]getUserFunc{}}
	chain, err := newNaiveChain(ctx, fx)
	if err != nil {
		return nil, err
	}
	ln, err := t.listen()
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(fx.serverTLS(true))),
		grpc.UnaryInterceptor(chain.intercept),
		grpc.MaxConcurrentStreams(rpc.DefaultMaxConcurrentStreams),
	)
	srv.RegisterService(&grpcUserService, users{})
	t.serve(func() error { return srv.Serve(ln) }, srv.Stop)

	addr := ln.Addr().String()
	for range o.Connections {
		// One ClientConn per connection slot: each keeps one HTTP/2 connection.
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(fx.clientTLS(true))))
		if err != nil {
			t.close()
			return nil, fmt.Errorf("bench: grpc-go client: %w", err)
		}
		t.closers = append(t.closers, func() { _ = conn.Close() })
		t.calls[ProtocolGRPC] = append(t.calls[ProtocolGRPC], grpcGetUser(conn))
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(fx.clientTLS(false))))
	if err != nil {
		t.close()
		return nil, fmt.Errorf("bench: grpc-go client: %w", err)
	}
	t.noCertClose = func() { _ = conn.Close() }
	t.noCert[ProtocolGRPC] = grpcGetUser(conn)
	return t, nil
}

// grpcGetUser returns a getUserFunc over a grpc-go connection, the token
// sent as metadata the usual way.
func grpcGetUser(conn *grpc.ClientConn) getUserFunc {
	return func(ctx context.Context, id, auth string) (string, error) {
		if auth != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
		}
		var res userv1.GetUserResponse
		if err := conn.Invoke(ctx, userv1connect.UserServiceGetUserProcedure, &userv1.GetUserRequest{Id: id}, &res); err != nil {
			return "", err
		}
		return res.GetUser().GetId(), nil
	}
}

// naiveChain is the chain a grpc-go user would write without Palisade, done
// the obvious way on every call and with no cache: the peer's SPIFFE ID from
// the verified certificate, the token verified with golang-jwt (signature,
// algorithm, iss, aud, exp) and checked against the certificate it is bound
// to, and the default policy evaluated by an OPA prepared query on an input
// built as a Go map, the request converted through protojson.
type naiveChain struct {
	query rego.PreparedEvalQuery
	key   any
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

func newNaiveChain(ctx context.Context, fx *fixture) (*naiveChain, error) {
	bundle, err := policy.DefaultBundle()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	opts := []func(*rego.Rego){rego.Query(policy.Query)}
	for name, src := range bundle.Modules {
		if !policy.IsTestFile(name) {
			opts = append(opts, rego.Module(name, src))
		}
	}
	q, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("bench: prepare the policy for grpc-go: %w", err)
	}
	return &naiveChain{query: q, key: fx.pub}, nil
}

func (n *naiveChain) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	leaf, err := peerCertificate(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return nil, status.Error(codes.Unauthenticated, "client certificate carries no SPIFFE ID")
	}
	certSum := sha256.Sum256(leaf.Raw)
	service, method := policy.SplitProcedure(info.FullMethod)
	input := map[string]any{
		"procedure":   info.FullMethod,
		"service":     service,
		"method":      method,
		"stream_type": "unary",
		"peer":        map[string]any{"spiffe_id": leaf.URIs[0].String(), "cert_sha256": hex.EncodeToString(certSum[:])},
		"http":        map[string]any{"method": "POST", "protocol": "grpc"},
	}

	md, _ := metadata.FromIncomingContext(ctx)
	if auth := md.Get("authorization"); len(auth) > 0 {
		raw, ok := strings.CutPrefix(auth[0], "Bearer ")
		if !ok || len(auth) > 1 {
			return nil, status.Error(codes.Unauthenticated, "invalid token")
		}
		var claims naiveClaims
		_, err := jwt.ParseWithClaims(raw, &claims, func(*jwt.Token) (any, error) { return n.key, nil },
			jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer(serverID), jwt.WithAudience(serverID), jwt.WithExpirationRequired())
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, "invalid token")
		}
		if claims.Cnf == nil || claims.Cnf.X5tS256 != base64.RawURLEncoding.EncodeToString(certSum[:]) {
			return nil, status.Error(codes.Unauthenticated, "token is not bound to this client certificate")
		}
		var act any
		if claims.Act != nil {
			act = map[string]any{"sub": claims.Act.Sub}
		}
		input["token"] = map[string]any{
			"sub": claims.Subject, "roles": claims.Roles, "scope": claims.Scope, "aud": []string(claims.Audience),
			"iss": claims.Issuer, "jti": claims.ID, "exp": claims.ExpiresAt.Unix(), "act": act, "bound": true,
		}
	}
	if msg, ok := req.(proto.Message); ok {
		data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
		if err != nil {
			return nil, status.Error(codes.Internal, "cannot convert the request")
		}
		var request map[string]any
		if err := json.Unmarshal(data, &request); err != nil {
			return nil, status.Error(codes.Internal, "cannot convert the request")
		}
		input["request"] = request
	}

	rs, err := n.query.Eval(ctx, rego.EvalInput(input))
	if err != nil || len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return nil, status.Error(codes.PermissionDenied, "permission denied")
	}
	decision, _ := rs[0].Expressions[0].Value.(map[string]any)
	if allow, _ := decision["allow"].(bool); !allow {
		return nil, status.Errorf(codes.PermissionDenied, "permission denied: %v", decision["reasons"])
	}
	return handler(ctx, req)
}

// peerCertificate returns the verified client certificate of the call.
func peerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, errors.New("no verified client certificate")
	}
	return info.State.VerifiedChains[0][0], nil
}
