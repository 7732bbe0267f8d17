package bench

import (
	"context"

	"google.golang.org/grpc"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
)

// users is the measured service: GetUser answers every request with a small
// user of constant shape, so the handler costs next to nothing and the
// figures are those of what stands in front of it. It reads no identity, so
// it serves every configuration alike.
type users struct {
	userv1connect.UnimplementedUserServiceHandler
}

var _ userv1connect.UserServiceHandler = users{}

// GetUser implements userv1connect.UserServiceHandler.
func (users) GetUser(_ context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	return &userv1.GetUserResponse{User: &userv1.User{
		Id:          req.GetId(),
		DisplayName: "Bench User",
		Email:       "bench@example.com",
		Roles:       []string{"customer"},
		Active:      true,
	}}, nil
}

// getUserServer is what grpc-go's service description dispatches to.
type getUserServer interface {
	GetUser(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error)
}

// grpcUserService describes user.v1.UserService/GetUser to grpc-go, as
// protoc-gen-go-grpc would generate it (the repository generates Connect
// stubs only).
var grpcUserService = grpc.ServiceDesc{
	ServiceName: userv1connect.UserServiceName,
	HandlerType: (*getUserServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "GetUser",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(userv1.GetUserRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return srv.(getUserServer).GetUser(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: userv1connect.UserServiceGetUserProcedure}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(getUserServer).GetUser(ctx, req.(*userv1.GetUserRequest))
			})
		},
	}},
	Metadata: "user/v1/user.proto",
}
