package rpc

import (
	"context"
	"errors"
	"net/http"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/rpc/internal/header"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
)

// TokenVerifier verifies a bearer token presented by a workload and returns
// the user it proves. *token.Verifier implements it.
type TokenVerifier interface {
	Verify(ctx context.Context, token string, presenter security.Workload) (*security.User, error)
}

// MaxAuthorizationBytes caps the Authorization header (8 KiB); a longer one
// is refused before it is parsed.
const MaxAuthorizationBytes = header.MaxAuthorizationBytes

// WWWAuthenticateInvalidToken is the challenge sent with a refused token (RFC 6750).
const WWWAuthenticateInvalidToken = `Bearer error="invalid_token"`

// authenticate establishes who is calling before any message is read: the
// workload from the verified client certificate and, when the request
// carries a bearer token, the user. A request it cannot attribute is refused
// with unauthenticated in the protocol the client speaks (a plain 401 for
// non-RPC requests), and authenticate returns false. A request without a
// token is not refused here: its Principal has no user and the policy
// decides. The caller, as far as it is known, goes on rec for the access log.
func (s *Server) authenticate(ctx context.Context, w http.ResponseWriter, r *http.Request, rec *callRecord) (*security.Principal, bool) {
	if r.TLS == nil {
		s.reject(ctx, w, r, "", FailureNoTLS, errors.New("request did not arrive over TLS"))
		return nil, false
	}
	workload, err := s.workload(r.TLS.VerifiedChains)
	if err != nil {
		s.reject(ctx, w, r, "", FailureCertificate, err)
		return nil, false
	}
	p := &security.Principal{Workload: workload}
	rec.workload = &p.Workload
	if values := r.Header.Values("Authorization"); len(values) > 0 {
		raw, err := header.Bearer(values)
		reason := FailureAuthorizationHeader
		if err == nil && s.cfg.tokens == nil {
			err, reason = errors.New("this server accepts no tokens (no verifier configured)"), FailureNoVerifier
		}
		if err == nil {
			if p.User, err = s.cfg.tokens.Verify(ctx, raw, workload); err != nil {
				reason = token.ReasonOf(err)
				if reason == "" {
					reason = FailureInvalidToken
				}
			}
		}
		if err != nil {
			s.reject(ctx, w, r, WWWAuthenticateInvalidToken, reason, err)
			return nil, false
		}
		p.Token = security.NewSecret(raw)
		rec.user = p.User
	}
	return p, true
}

// Reasons authentication refuses a request, besides the token verifier's
// (token.ReasonExpired, token.ReasonBinding, …): the "reason" label of the
// authentication failure metric and the span attribute AttrAuthnReason.
const (
	FailureNoTLS               = "no_tls"               // the request did not come over TLS
	FailureCertificate         = "certificate"          // no SPIFFE ID of the trust domain in the client certificate
	FailureAuthorizationHeader = "authorization_header" // not exactly one well-formed "Bearer" Authorization header
	FailureNoVerifier          = "no_verifier"          // a token came to a server that accepts none
	FailureInvalidToken        = "invalid_token"        // the verifier refused the token without a reason
)

// gate is the server's connect.RequestGateFunc (every mounted handler has
// it): it runs once a call's headers are in and the protocol is known,
// before any message is read or decoded.
//
// For a unary call it takes, in this order, what needs no request: the
// rate limit (WithRateLimit; a caller over its limit costs no policy
// evaluation, and no body read), and the decision the policy can take
// without the request (authz.Interceptor.DecideBeforeRequest). A refusal
// is sent in the client's protocol before a byte of the body is read, with
// the code, message and decision id the interceptors would have given, and
// the decision logged as they would have. An allow the policy took here is
// the call's decision: the authorization interceptor does not evaluate it
// again.
//
// Streams are rate limited and decided by the interceptors when they open,
// which is before any message is read too; here they only have their body
// watch told to stop at the first message.
func (s *Server) gate(ctx context.Context, spec connect.Spec, peer connect.Peer, header http.Header) (context.Context, error) {
	rec := recordOf(ctx)
	if spec.StreamType != connect.StreamTypeUnary {
		if rec != nil {
			rec.body.firstMessage()
		}
		return nil, nil
	}
	if s.rateLimit != nil {
		if err := s.rateLimit.take(ctx); err != nil {
			return nil, s.refuseEarly(ctx, spec, header, err)
		}
	}
	method := http.MethodPost
	if rec != nil && rec.get {
		method = http.MethodGet
	}
	next, err := s.authorizer.DecideBeforeRequest(ctx, spec, peer, method)
	if err != nil {
		return nil, s.refuseEarly(ctx, spec, header, err)
	}
	return next, nil
}

// refuseEarly records a call the gate refuses for the access log and the
// trace, and lets go of its unread body.
func (s *Server) refuseEarly(ctx context.Context, spec connect.Spec, header http.Header, err error) error {
	if rec := recordOf(ctx); rec != nil {
		rec.set(connect.CodeOf(err))
		rec.body.abandon()
	}
	s.tel.gated(ctx, spec, header, err)
	return err
}

// reject answers unauthenticated. The client sees a fixed message; the
// reason goes to the log, the metrics and the trace. challenge, when set,
// is the WWW-Authenticate value.
func (s *Server) reject(ctx context.Context, w http.ResponseWriter, r *http.Request, challenge, failure string, reason error) {
	recordOf(ctx).set(connect.CodeUnauthenticated)
	s.tel.refused(ctx, r, failure)
	msg := "client certificate does not carry a SPIFFE ID of this trust domain"
	if challenge != "" {
		msg = "invalid token"
		w.Header().Set("WWW-Authenticate", challenge)
	}
	s.cfg.logger.WarnContext(ctx, "request refused: unauthenticated",
		"path", r.URL.Path, "remote", r.RemoteAddr, "reason", reason.Error())
	err := connect.NewError(connect.CodeUnauthenticated, errors.New(msg))
	if s.errWriter.IsSupported(r) {
		_ = s.errWriter.Write(w, r, err)
		return
	}
	http.Error(w, msg, http.StatusUnauthorized)
}
