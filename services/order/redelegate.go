package order

import (
	"context"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
)

// redelegating is the UserDirectory of the service: the user service client,
// which sends a delegated token (from delegator) with each call made for a
// user. When the user service refuses the delegated token (unauthenticated),
// the token is forgotten and the call, which has no side effects, is made
// once more with a freshly exchanged one. A cached token is refused when it is
// bound to a certificate this service no longer presents — its connections
// to the user service are re-established with a rotated certificate (when
// the old one expires, or the user service restarts) — or signed by a key
// the issuer has since retired.
type redelegating struct {
	users     UserDirectory
	delegator *token.Delegator
}

func (r redelegating) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	res, err := r.users.GetUser(ctx, req)
	if p, ok := security.FromContext(ctx); ok && !p.Token.IsZero() && connect.CodeOf(err) == connect.CodeUnauthenticated {
		r.delegator.Forget(ctx)
		return r.users.GetUser(ctx, req)
	}
	return res, err
}
