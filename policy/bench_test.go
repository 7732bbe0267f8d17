package policy_test

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/services/user"
)

// BenchmarkDefaultPolicy measures one decision of the sample user
// service's policy (the base and its layer): a customer reading their own
// record (needs the request's id) and a health check (no request fields),
// from the decision cache and evaluated.
func BenchmarkDefaultPolicy(b *testing.B) {
	bundle, err := policy.LoadFS(user.Policy(), "services/user/policy")
	if err != nil {
		b.Fatal(err)
	}
	engine, err := policy.NewEngine(context.Background(), bundle, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	cli, _ := spiffeid.Parse("spiffe://palisade.local/client/cli")
	principal := &security.Principal{
		Workload: security.Workload{ID: cli, CertSHA256: sha256.Sum256([]byte("cli"))},
		User: &security.User{Subject: "alice", Roles: []string{"customer"}, Audience: []string{"spiffe://palisade.local/svc/user"},
			Issuer: "spiffe://palisade.local/svc/user", TokenID: "j", ExpiresAt: time.Now().Add(time.Hour), CertBound: true},
	}
	cases := map[string]*authz.Input{
		"with request": {
			Procedure: "/user.v1.UserService/GetUser", Service: "user.v1.UserService", Method: "GetUser", StreamType: "unary",
			Principal: principal, Request: &userv1.GetUserRequest{Id: "alice"}, HTTPMethod: "POST", Protocol: "connect",
		},
		"without request": {
			Procedure: "/grpc.health.v1.Health/Check", Service: "grpc.health.v1.Health", Method: "Check", StreamType: "unary",
			Principal: principal, HTTPMethod: "POST", Protocol: "grpc",
		},
	}
	for name, in := range cases {
		// cached: Decide, as every call makes it — the decision cache answers
		// a repeated input. evaluated: the same input through OPA every time,
		// the cost of a first call (and of a policy that cannot be cached).
		b.Run(name+"/cached", func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				d, err := engine.Decide(ctx, in)
				if err != nil || !d.Allow {
					b.Fatalf("%+v %v", d, err)
				}
			}
		})
		b.Run(name+"/evaluated", func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				d, err := engine.Eval(ctx, policy.InputValue(in))
				if err != nil || !d.Allow {
					b.Fatalf("%+v %v", d, err)
				}
			}
		})
	}
}
