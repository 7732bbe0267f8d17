package authz_test

import (
	"context"
	"fmt"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// An Authorizer written in Go: admins may call anything, everyone else
// nothing, and a caller without a token is told to bring one. A server
// takes it as rpc.NewServer(src, authorizer); the decisions here are asked
// directly, as the server's interceptor would.
func ExampleAuthorizerFunc() {
	adminsOnly := authz.AuthorizerFunc(func(_ context.Context, in *authz.Input) (authz.Decision, error) {
		switch u := in.Principal.User; {
		case u == nil:
			return authz.Decision{Reasons: []string{"a user token is required"}, NeedsUser: true}, nil
		case u.HasRole("admin"):
			return authz.Decision{Allow: true}, nil
		default:
			return authz.Decision{Reasons: []string{"admin role required"}}, nil
		}
	})

	cli := security.Workload{ID: mustID("spiffe://palisade.local/client/cli")}
	for _, p := range []*security.Principal{
		{Workload: cli},
		{Workload: cli, User: &security.User{Subject: "alice", Roles: []string{"customer"}}},
		{Workload: cli, User: &security.User{Subject: "root", Roles: []string{"admin"}}},
	} {
		in := &authz.Input{Procedure: "/user.v1.UserService/ListUsers", Principal: p}
		d, err := adminsOnly.Decide(context.Background(), in)
		if err != nil {
			panic(err)
		}
		fmt.Println(d.Allow, d.NeedsUser, d.Reasons)
	}
	// Output:
	// false true [a user token is required]
	// false false [admin role required]
	// true false []
}

// A static allow-list: which workloads may call which procedures, and
// whether a user token must come with the call. Procedures it does not name
// are denied. A server that authorizes with it does not link OPA.
func ExampleNewAllowList() {
	allow, err := authz.NewAllowList(map[string]authz.Rule{
		"/grpc.health.v1.Health/Check": {Workloads: []string{authz.AnyWorkload}},
		"/user.v1.UserService/GetUser": {Workloads: []string{"spiffe://palisade.local/svc/order"}, NeedsUser: true},
	})
	if err != nil {
		panic(err)
	}
	order := &security.Principal{Workload: security.Workload{ID: mustID("spiffe://palisade.local/svc/order")}}
	for _, procedure := range []string{"/grpc.health.v1.Health/Check", "/user.v1.UserService/GetUser", "/user.v1.UserService/ListUsers"} {
		d, err := allow.Decide(context.Background(), &authz.Input{Procedure: procedure, Principal: order})
		if err != nil {
			panic(err)
		}
		fmt.Println(procedure, d.Allow, d.Reasons)
	}
	// Output:
	// /grpc.health.v1.Health/Check true []
	// /user.v1.UserService/GetUser false [/user.v1.UserService/GetUser needs a user token]
	// /user.v1.UserService/ListUsers false [procedure is not on the allow-list]
}

func mustID(s string) spiffeid.ID {
	id, err := spiffeid.Parse(s)
	if err != nil {
		panic(err)
	}
	return id
}
