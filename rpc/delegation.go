package rpc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"

	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	"github.com/palisade-rpc/palisade/proto/palisade/token/v1/tokenv1connect"
	"github.com/palisade-rpc/palisade/security/token"
)

// delegation is WithDelegation's configuration.
type delegation struct {
	issuerURL string
	opts      []token.DelegatorOption
}

// WithDelegation makes a client act for the user of the call it is made in:
// each call made in the context of a call this service serves for a user
// (security.FromContext carries the user's token) carries a token exchanged
// for it at the token issuer's palisade.token.v1.TokenService, issuerURL
// ("https://host:port"): sub the user, act.sub this workload, aud the
// callee's SPIFFE ID from WithServerID (without it, the issuer's default),
// bound to this workload's certificate. A call made without a user token
// goes as the workload alone. The exchanged token is cached until shortly
// before it expires (token.WithMargin, token.WithCacheSize).
//
// A delegated token the callee refuses (unauthenticated) is dropped from
// the cache, so the next call exchanges anew; an idempotent call
// (idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT) is made again at once
// with a fresh token, twice at most. A cached token is refused when it is
// bound to a certificate this workload no longer presents (its connections
// were re-established after a rotation), or signed by a key the issuer has
// since retired.
//
// The exchange goes over the client's own connections, so a token exchanged
// now is bound to the certificate the call presents next; with
// WithServerID, the issuer is checked for that ID like the callee, and so
// must be the callee itself (issuerURL is then the client's base URL or one
// of its endpoints). The workload must be one the issuer's policy lets
// exchange (Palisade's base policy: data.palisade.config.delegates).
// WithDelegation and WithTokenSource exclude each other.
func WithDelegation(issuerURL string, opts ...token.DelegatorOption) ClientOption {
	d := &delegation{issuerURL: issuerURL, opts: opts}
	return clientOptionFunc(func(c *clientConfig) { c.delegation = d })
}

// maxRedelegations bounds the exchanges one idempotent call makes after a
// refusal. The exchange and the call share one connection pool; the one way
// they part is a connection made with an old certificate being drained
// between the two (its peer sends GOAWAY with the exchange's response): the
// next round then runs over the new connection.
const maxRedelegations = 2

// newDelegatingInterceptor returns the interceptor that adds delegated
// tokens to the calls of a client calling baseURL through httpClient.
func newDelegatingInterceptor(d *delegation, cfg clientConfig, baseURL *url.URL, httpClient *http.Client, hosts map[string]bool, interceptors []connect.Interceptor) (*delegatingInterceptor, error) {
	u, err := url.Parse(d.issuerURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("rpc: client: WithDelegation: issuer URL %q must be https://host:port", d.issuerURL)
	}
	if cfg.serverID != "" && u.Host != baseURL.Host && !hosts[u.Host] {
		return nil, fmt.Errorf("rpc: client: WithDelegation: issuer %s is not the service this client calls (%s): its connections are checked for server ID %s", u.Host, baseURL.Host, cfg.serverID)
	}
	exchange := tokenv1connect.NewTokenServiceClient(httpClient, d.issuerURL, connect.WithInterceptors(interceptors...))
	audience := cfg.serverID
	delegator := token.NewDelegator(func(ctx context.Context, subject string) (string, time.Time, error) {
		res, err := exchange.ExchangeToken(ctx, &tokenv1.ExchangeTokenRequest{SubjectToken: subject, Audience: audience})
		if err != nil {
			return "", time.Time{}, err
		}
		if res.GetAccessToken() == "" || res.GetExpiresIn() <= 0 {
			return "", time.Time{}, errors.New("the issuer returned no token")
		}
		return res.GetAccessToken(), time.Now().Add(time.Duration(res.GetExpiresIn()) * time.Second), nil
	}, d.opts...)
	return &delegatingInterceptor{delegator: delegator}, nil
}

// delegatingInterceptor sends the delegated token of the call's user.
type delegatingInterceptor struct {
	delegator *token.Delegator
}

// token sets the delegated token on header; it reports whether the call
// carries one.
func (d *delegatingInterceptor) token(ctx context.Context, header http.Header) (bool, error) {
	tok, err := d.delegator.Token(ctx)
	if err != nil {
		return false, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("exchange the user's token: %w", err))
	}
	if tok == "" {
		header.Del("Authorization")
		return false, nil
	}
	header.Set("Authorization", "Bearer "+tok)
	return true, nil
}

func (d *delegatingInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		delegated, err := d.token(ctx, req.Header())
		if err != nil {
			return nil, err
		}
		res, err := next(ctx, req)
		if !delegated || connect.CodeOf(err) != connect.CodeUnauthenticated {
			return res, err
		}
		d.delegator.Forget(ctx)
		if req.Spec().IdempotencyLevel == connect.IdempotencyUnknown {
			return res, err // the refused call may not be made again
		}
		for range maxRedelegations {
			if _, terr := d.token(ctx, req.Header()); terr != nil {
				return nil, terr
			}
			res, err = next(ctx, req)
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				return res, err
			}
			d.delegator.Forget(ctx)
		}
		return res, err
	}
}

func (d *delegatingInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if _, err := d.token(ctx, conn.RequestHeader()); err != nil {
			return &failedConn{StreamingClientConn: conn, err: err}
		}
		return conn
	}
}

func (d *delegatingInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
