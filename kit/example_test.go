package kit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing/fstest"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/kit"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
)

// examplePolicy is the example service's layer of the policy (on the
// framework's base), with its rego tests; a service embeds its own
// (//go:embed *.rego data.json).
var examplePolicy = fstest.MapFS{
	"users.rego": {Data: []byte(`package palisade.authz

allow if input.procedure == "/user.v1.UserService/GetUser"
`)},
	"users_test.rego": {Data: []byte(`package palisade.authz_test

test_get_user if data.palisade.authz.allow with input as {"procedure": "/user.v1.UserService/GetUser"}

test_other if not data.palisade.authz.allow with input as {"procedure": "/user.v1.UserService/DeleteUser"}
`)},
}

// The main of a service is one call to kit.Main, which parses the command
// line, serves until SIGINT or SIGTERM, drains, and exits 1 on an error:
//
//	package main
//
//	import (
//		"github.com/palisade-rpc/palisade/kit"
//		"github.com/palisade-rpc/palisade/rpc"
//
//		"example.com/inventory/gen/inventory/v1/inventoryv1connect"
//		"example.com/inventory/internal/inventory"
//		"example.com/inventory/policy"
//	)
//
//	func main() {
//		kit.Main("inventory", func(s *kit.Service) error {
//			return rpc.Mount(s.Server, inventoryv1connect.NewInventoryServiceHandler, inventory.New(s))
//		}, kit.WithPolicy(policy.Files))
//	}
//
// Here the same setup runs under kit.Run, the testable core of Main, with the
// certificates of a development PKI (`palisade certs init`) in a temporary
// directory. A background loop of the service calls the service itself
// once it serves, with the service's certificate: the call passes mTLS and
// the policy and reaches the handler, which does not implement GetUser.
// Then the loop ends Run's context, and the service drains and stops.
func Example() {
	dir, err := os.MkdirTemp("", "kit-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	if _, err := certs.InitDev(dir); err != nil {
		fmt.Println(err)
		return
	}
	args := []string{
		"--addr", "127.0.0.1:0",
		"--ca", filepath.Join(dir, "ca.pem"),
		"--cert", filepath.Join(dir, "usersvc.pem"),
		"--key", filepath.Join(dir, "usersvc-key.pem"),
		"--log-level", "error",
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	err = kit.Run(ctx, "usersvc", args, func(s *kit.Service) error {
		s.Go("call myself", func(ctx context.Context) error {
			defer stop()
			return callOnceServing(ctx, s)
		})
		return rpc.Mount(s.Server, userv1connect.NewUserServiceHandler,
			userv1connect.UserServiceHandler(userv1connect.UnimplementedUserServiceHandler{}))
	}, kit.WithPolicy(examplePolicy))
	fmt.Println("stopped:", err)
	// Output:
	// spiffe://palisade.local/svc/user serves
	// GetUser: unimplemented
	// stopped: <nil>
}

// callOnceServing waits until s serves, then calls its GetUser.
func callOnceServing(ctx context.Context, s *kit.Service) error {
	for !s.Server.Serving() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	fmt.Println(s.ID, "serves")
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, "https://"+s.Server.Addr().String(), s.Source, s.ClientOptions()...)
	if err != nil {
		return err
	}
	_, err = client.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("GetUser: %v, want a connect error", err)
	}
	fmt.Println("GetUser:", ce.Code())
	return nil
}
