package rpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// users is a service implementation: the generated handler interface, with
// the caller read from the context.
type users struct {
	userv1connect.UnimplementedUserServiceHandler
}

func (users) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	caller, _ := security.FromContext(ctx) // every call that reaches a handler has one
	return &userv1.GetUserResponse{User: &userv1.User{
		Id:          req.GetId(),
		DisplayName: "asked by " + caller.Workload.ID.String(),
	}}, nil
}

// A server with a mounted service and a client calling it over mTLS on
// 127.0.0.1. The certificates come from a CA made on the spot; a service
// reads its own from files (mtls.NewFileSource) or the SPIFFE Workload API
// (workloadapi.NewSource of security/mtls/workloadapi).
func Example() {
	ca, err := certs.NewCA("palisade.local", time.Hour)
	if err != nil {
		panic(err)
	}
	bundle := x509.NewCertPool()
	bundle.AddCert(ca.Cert)
	source := func(id string) mtls.Source {
		issued, err := ca.Issue(certs.Leaf{SPIFFEID: id, Usage: certs.UsageWorkload})
		if err != nil {
			panic(err)
		}
		return mtls.NewStaticSource(tls.Certificate{Certificate: [][]byte{issued.Cert.Raw}, PrivateKey: issued.Key, Leaf: issued.Cert}, bundle)
	}

	// Every call is authorized: here the command-line client may call
	// GetUser, without a user token; nothing else is allowed. (Services
	// usually decide with the OPA engine of package policy.)
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		userv1connect.UserServiceGetUserProcedure: {Workloads: []string{"spiffe://palisade.local/client/cli"}},
	})
	if err != nil {
		panic(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	srv, err := rpc.NewServer(source("spiffe://palisade.local/svc/user"), authorizer, rpc.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(users{})); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() { stop(); <-served }()

	// Clients check the server by its SPIFFE ID.
	url := "https://" + ln.Addr().String()
	cli, err := rpc.NewClient(userv1connect.NewUserServiceClient, url, source("spiffe://palisade.local/client/cli"),
		rpc.WithServerID("spiffe://palisade.local/svc/user"))
	if err != nil {
		panic(err)
	}
	res, err := cli.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.GetUser().GetDisplayName())

	// Another workload of the same CA gets through the handshake, and the
	// authorizer refuses it.
	other, err := rpc.NewClient(userv1connect.NewUserServiceClient, url, source("spiffe://palisade.local/client/other"),
		rpc.WithServerID("spiffe://palisade.local/svc/user"))
	if err != nil {
		panic(err)
	}
	_, err = other.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	fmt.Println(connect.CodeOf(err))
	// Output:
	// asked by spiffe://palisade.local/client/cli
	// permission_denied
}
