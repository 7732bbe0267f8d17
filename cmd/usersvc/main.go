// Command usersvc serves the sample user service (user.v1.UserService) and
// the token issuer (user.v1.AuthService, and the JWKS at
// /.well-known/jwks.json) over mTLS: Connect, gRPC and gRPC-Web on one port.
package main

import (
	"github.com/palisade-rpc/palisade/kit"
	"github.com/palisade-rpc/palisade/services/user"
)

func main() {
	var svc usersvc
	kit.Main("usersvc", svc.setup,
		kit.WithDescription(description),
		kit.WithPolicy(user.Policy()),
		kit.WithAddr("127.0.0.1:8443"),
		kit.WithFlags(svc.define),
		// usersvc verifies the tokens it issues with its own keys.
		kit.WithTokenVerifier(svc.build))
}
