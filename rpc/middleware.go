package rpc

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/security"
)

// TokenVerifier verifies a bearer token presented by a workload and returns
// the user it proves. *token.Verifier implements it.
type TokenVerifier interface {
	Verify(ctx context.Context, token string, presenter security.Workload) (*security.User, error)
}

// MaxAuthorizationBytes caps the Authorization header; a longer one is
// refused before it is parsed.
const MaxAuthorizationBytes = 8 << 10

// WWWAuthenticateInvalidToken is the challenge sent with a refused token (RFC 6750).
const WWWAuthenticateInvalidToken = `Bearer error="invalid_token"`

// authenticate is the HTTP middleware that establishes who is calling before
// any message is read: the workload from the verified client certificate
// and, when the request carries a bearer token, the user. A request it cannot
// attribute is refused with unauthenticated in the protocol the client speaks
// (a plain 401 for non-RPC requests). A request without a token is not
// refused here: its Principal has no user and the policy decides.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			s.reject(w, r, "", errors.New("request did not arrive over TLS"))
			return
		}
		workload, err := s.workload(r.TLS.VerifiedChains)
		if err != nil {
			s.reject(w, r, "", err)
			return
		}
		p := &security.Principal{Workload: workload}
		if values := r.Header.Values("Authorization"); len(values) > 0 {
			raw, err := bearer(values)
			if err == nil && s.cfg.tokens == nil {
				err = errors.New("this server accepts no tokens (no verifier configured)")
			}
			if err == nil {
				p.User, err = s.cfg.tokens.Verify(r.Context(), raw, workload)
			}
			if err != nil {
				s.reject(w, r, WWWAuthenticateInvalidToken, err)
				return
			}
			p.Token = security.NewSecret(raw)
		}
		next.ServeHTTP(w, r.WithContext(security.NewContext(r.Context(), p)))
	})
}

// bearer extracts the token from the Authorization header values: exactly
// one header, scheme Bearer, within MaxAuthorizationBytes, token68 syntax.
func bearer(values []string) (string, error) {
	if len(values) != 1 {
		return "", errors.New("more than one Authorization header")
	}
	v := values[0]
	if len(v) > MaxAuthorizationBytes {
		return "", errors.New("Authorization header too large")
	}
	scheme, raw, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return "", errors.New("Authorization is not a Bearer token")
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", errors.New("bearer token has characters outside base64url and '.'")
		}
	}
	return raw, nil
}

// reject answers unauthenticated. The client sees a fixed message; the
// reason goes to the log. challenge, when set, is the WWW-Authenticate value.
func (s *Server) reject(w http.ResponseWriter, r *http.Request, challenge string, reason error) {
	msg := "client certificate does not carry a SPIFFE ID of this trust domain"
	if challenge != "" {
		msg = "invalid token"
		w.Header().Set("WWW-Authenticate", challenge)
	}
	s.cfg.logger.WarnContext(r.Context(), "request refused: unauthenticated",
		"path", r.URL.Path, "remote", r.RemoteAddr, "reason", reason.Error())
	err := connect.NewError(connect.CodeUnauthenticated, errors.New(msg))
	if s.errWriter.IsSupported(r) {
		_ = s.errWriter.Write(w, r, err)
		return
	}
	http.Error(w, msg, http.StatusUnauthorized)
}
