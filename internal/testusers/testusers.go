// Package testusers is a user.v1.UserService for the tests of the chain
// (rpc, authz, policy, security/token): a handler that answers with what
// the chain told it of the caller. It is a helper of this repository's
// tests, not of a service's: rpc/rpctest, which adopters use, stays free of
// the sample services' protos.
package testusers

import (
	"context"
	"errors"
	"sync/atomic"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security"
)

// Service is a user.v1.UserService for tests of the chain. GetUser answers with
// a user whose DisplayName is the calling workload's SPIFFE ID and whose
// Email is the calling user's subject (or "" without a token), with the
// user's roles; it counts the calls that reached it. The other methods are
// unimplemented.
type Service struct {
	userv1connect.UnimplementedUserServiceHandler
	// Hold, when set, makes GetUser wait until it is closed (or the call's
	// context ends) before answering, to keep a call in flight.
	Hold  chan struct{}
	calls atomic.Int64
}

// Calls returns how many calls reached the handler.
func (u *Service) Calls() int64 { return u.calls.Load() }

// GetUser implements userv1connect.UserServiceHandler.
func (u *Service) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	u.calls.Add(1)
	if u.Hold != nil {
		select {
		case <-u.Hold:
		case <-ctx.Done():
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
	p, ok := security.FromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeInternal, errors.New("no principal"))
	}
	user := &userv1.User{Id: req.GetId(), DisplayName: p.Workload.ID.String()}
	if p.User != nil {
		user.Email = p.User.Subject
		user.Roles = p.User.Roles
		if p.User.Actor != "" {
			user.DisplayName += " acting for " + p.User.Subject
		}
	}
	return &userv1.GetUserResponse{User: user}, nil
}

// Mount mounts u on s.
func (u *Service) Mount(s *rpc.Server) error {
	return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(u))
}
