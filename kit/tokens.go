package kit

import (
	"fmt"
	"strings"

	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/security/token"
)

// verifier returns the verifier of bearer tokens: the service's own
// (WithTokenVerifier), or one of the issuer of --token-issuer and
// --jwks-url, whose keys are refreshed by a loop. Without either it
// returns nil, and warns: every call with a token will be refused.
func (r *runner) verifier() (rpc.TokenVerifier, error) {
	if r.cfg.newVerifier != nil {
		v, err := r.cfg.newVerifier(r.svc)
		if err != nil {
			return nil, err
		}
		if v == nil {
			r.log.Warn("bearer tokens will be refused: the service's verifier is nil; a call with a token fails with unauthenticated (reason no_verifier)")
			return nil, nil
		}
		return v, nil
	}
	f := r.f
	if f.tokenIssuer == "" {
		r.log.Warn("bearer tokens will be refused: no token issuer is configured; set --token-issuer and --jwks-url to verify them (a call with a token fails with unauthenticated, reason no_verifier)")
		return nil, nil
	}
	audience := f.tokenAudience
	if audience == "" {
		audience = r.svc.ID.String()
	}
	// The JWKS says which keys may sign the tokens this service trusts: it
	// is fetched over mTLS, and from the issuer itself when the issuer is a
	// workload (its iss a SPIFFE ID), not from any server of the trust
	// domain.
	opts := r.svc.ClientOptions()
	if strings.HasPrefix(f.tokenIssuer, "spiffe://") {
		if _, err := spiffeid.Parse(f.tokenIssuer); err != nil {
			return nil, fmt.Errorf("--token-issuer: %w", err)
		}
		opts = append(opts, rpc.WithServerID(f.tokenIssuer))
	}
	client, err := rpc.NewHTTPClient(r.svc.Source, opts...)
	if err != nil {
		return nil, fmt.Errorf("--jwks-url: %w", err)
	}
	r.httpClients = append(r.httpClients, client)
	keys := token.NewRemoteKeys(f.jwksURL, client, token.WithLogger(r.log))
	v, err := token.NewVerifier(f.tokenIssuer, audience, keys)
	if err != nil {
		return nil, fmt.Errorf("token verification: %w", err)
	}
	r.svc.Go("jwks refresh", keys.Run)
	r.log.Info("verifying bearer tokens", "issuer", f.tokenIssuer, "jwks", f.jwksURL, "audience", audience)
	return v, nil
}
