package user

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// WatchUserChanges is not served yet: the change feed lands with the
// streaming work. Until then it answers unimplemented (and the default
// policy denies it before that).
func (s *Service) WatchUserChanges(context.Context, *userv1.WatchUserChangesRequest, *connect.ServerStream[userv1.WatchUserChangesResponse]) error {
	return connect.NewError(connect.CodeUnimplemented, errors.New("WatchUserChanges is not implemented yet"))
}
