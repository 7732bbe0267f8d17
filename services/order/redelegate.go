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
// again with a freshly exchanged one. A cached token is refused when it is
// bound to a certificate this service no longer presents — its connections
// to the user service are re-established with a rotated certificate (when
// the old one expires, or the user service restarts) — or signed by a key
// the issuer has since retired.
//
// The exchange and the call share one connection pool (the service's
// upstream HTTP client), so a token exchanged now is bound to the
// certificate of the connection the call takes next. The one way they part
// is a connection made with the old certificate being drained between the
// two (its peer sends GOAWAY with the exchange's response): the next round
// then runs over the new connection. Hence at most maxRedelegations rounds.
type redelegating struct {
	users     UserDirectory
	delegator *token.Delegator
}

// maxRedelegations bounds the exchanges one call makes after a refusal.
const maxRedelegations = 2

func (r redelegating) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	res, err := r.users.GetUser(ctx, req)
	p, ok := security.FromContext(ctx)
	if !ok || p.Token.IsZero() {
		return res, err
	}
	for range maxRedelegations {
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			break
		}
		r.delegator.Forget(ctx)
		res, err = r.users.GetUser(ctx, req)
	}
	return res, err
}
