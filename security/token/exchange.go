package token

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"

	tokenv1 "github.com/palisade-rpc/palisade/proto/palisade/token/v1"
	"github.com/palisade-rpc/palisade/security"
)

// ExchangeOption configures NewExchangeHandler.
type ExchangeOption interface {
	applyExchange(*exchangeConfig)
}

type exchangeConfig struct {
	logger *slog.Logger
}

// ExchangeHandler serves palisade.token.v1.TokenService, the token exchange
// (RFC 8693), for a token issuer: mount it with
//
//	rpc.Mount(srv, tokenv1connect.NewTokenServiceHandler, tokenv1connect.TokenServiceHandler(h))
//
// Which workloads may exchange is the authorizer's decision (Palisade's base
// policy allows data.palisade.config.delegates); the handler checks the
// subject token. It never logs a token.
type ExchangeHandler struct {
	issuer    *Issuer
	verifier  *Verifier
	audiences []string
	logger    *slog.Logger
}

// NewExchangeHandler returns a handler that verifies subject tokens with
// verifier and issues the exchanged ones with issuer, for one of audiences
// (the first is the default of a request that names none).
func NewExchangeHandler(issuer *Issuer, verifier *Verifier, audiences []string, opts ...ExchangeOption) (*ExchangeHandler, error) {
	if issuer == nil || verifier == nil {
		return nil, errors.New("token: exchange handler needs an issuer and a verifier")
	}
	if len(audiences) == 0 || slices.Contains(audiences, "") {
		return nil, errors.New("token: exchange handler needs audiences, none empty")
	}
	cfg := exchangeConfig{logger: slog.Default()}
	for _, o := range opts {
		o.applyExchange(&cfg)
	}
	return &ExchangeHandler{issuer: issuer, verifier: verifier, audiences: slices.Clone(audiences), logger: cfg.logger}, nil
}

// ExchangeToken trades the token of a user, presented by the workload that
// received it, for a token that lets that workload act for the user: sub is
// the user, act.sub the workload, aud the requested audience, the lifetime
// at most MaxDelegatedTTL (and never past the user's token), bound to the
// workload's certificate. The subject token must name the workload in its
// audience — a service can only exchange tokens that were meant for it —
// and must not be delegated itself.
func (h *ExchangeHandler) ExchangeToken(ctx context.Context, req *tokenv1.ExchangeTokenRequest) (*tokenv1.ExchangeTokenResponse, error) {
	p, ok := security.FromContext(ctx)
	if !ok || p.Workload.ID.IsZero() {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no client identity"))
	}
	if req.GetSubjectToken() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("subject_token: required"))
	}
	aud := req.GetAudience()
	if aud == "" {
		aud = h.audiences[0]
	}
	if !slices.Contains(h.audiences, aud) {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("audience: not a service this issuer issues tokens for"))
	}
	actor := p.Workload.ID.String()
	user, err := h.verifier.VerifySubjectToken(ctx, req.GetSubjectToken(), actor)
	if err != nil {
		h.logger.WarnContext(ctx, "token exchange refused", "actor", actor, "reason", err.Error())
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("subject token is invalid"))
	}
	ttl := min(MaxDelegatedTTL, time.Until(user.ExpiresAt).Truncate(time.Second))
	if ttl < time.Second {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("subject token is about to expire"))
	}
	tok, _, err := h.issuer.Issue(Grant{
		Subject:    user.Subject,
		Roles:      user.Roles,
		Scope:      user.Scope,
		Audience:   []string{aud},
		TTL:        ttl,
		CertSHA256: &p.Workload.CertSHA256,
		Actor:      actor,
	})
	if err != nil {
		h.logger.ErrorContext(ctx, "token exchange: issuing the token failed", "error", err)
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("internal error"))
	}
	h.logger.InfoContext(ctx, "token exchanged", "subject", user.Subject, "actor", actor, "audience", aud, "ttl", ttl.String())
	return &tokenv1.ExchangeTokenResponse{AccessToken: tok, ExpiresIn: int64(ttl / time.Second), TokenType: "Bearer"}, nil
}
