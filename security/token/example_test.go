package token_test

import (
	"context"
	"fmt"

	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/security/token"
)

// An issuer signs a token bound to the client certificate that asked for
// it; a service's verifier checks it against the issuer's public keys and
// the certificate presenting it. (A service that is not the issuer fetches
// the keys from the issuer's JWKS with NewRemoteKeys instead of
// NewStaticKeys.)
func Example() {
	keys, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		panic(err)
	}
	const issuerName, audience = "spiffe://palisade.local/svc/user", "spiffe://palisade.local/svc/order"
	issuer, err := token.NewIssuer(keys, issuerName, token.WithAudience(audience))
	if err != nil {
		panic(err)
	}
	public, err := keys.PublicKeys()
	if err != nil {
		panic(err)
	}
	verifier, err := token.NewVerifier(issuerName, audience, token.NewStaticKeys(public))
	if err != nil {
		panic(err)
	}

	// The client that logs in: its SPIFFE ID and the SHA-256 of its
	// certificate (security.Workload, as the server reads it off the
	// connection).
	cli := security.Workload{ID: mustID("spiffe://palisade.local/client/cli"), CertSHA256: [32]byte{1}}
	raw, _, err := issuer.Issue(token.Grant{Subject: "alice", Roles: []string{"customer"}, CertSHA256: &cli.CertSHA256})
	if err != nil {
		panic(err)
	}

	user, err := verifier.Verify(context.Background(), raw, cli)
	if err != nil {
		panic(err)
	}
	fmt.Println(user.Subject, user.Roles, "bound:", user.CertBound)

	// The same token over a connection with another certificate is refused.
	thief := security.Workload{ID: mustID("spiffe://palisade.local/client/other"), CertSHA256: [32]byte{2}}
	_, err = verifier.Verify(context.Background(), raw, thief)
	fmt.Println("refused:", token.ReasonOf(err))
	// Output:
	// alice [customer] bound: true
	// refused: binding
}

func mustID(s string) spiffeid.ID {
	id, err := spiffeid.Parse(s)
	if err != nil {
		panic(err)
	}
	return id
}
