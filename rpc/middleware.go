package rpc

import (
	"errors"
	"net/http"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/security"
)

// authenticate is the HTTP middleware that establishes who is calling before
// any message is read: the workload from the verified client certificate.
// A request it cannot attribute is refused with unauthenticated in the
// protocol the client speaks (plain 401 for non-RPC requests).
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			s.reject(w, r, errors.New("request did not arrive over TLS"))
			return
		}
		workload, err := security.WorkloadFromChains(r.TLS.VerifiedChains, s.cfg.trustDomain)
		if err != nil {
			s.reject(w, r, err)
			return
		}
		p := &security.Principal{Workload: workload}
		next.ServeHTTP(w, r.WithContext(security.NewContext(r.Context(), p)))
	})
}

// reject answers unauthenticated. The client sees a fixed message; the
// reason goes to the log.
func (s *Server) reject(w http.ResponseWriter, r *http.Request, reason error) {
	s.cfg.logger.WarnContext(r.Context(), "request refused: unauthenticated",
		"path", r.URL.Path, "remote", r.RemoteAddr, "reason", reason.Error())
	err := connect.NewError(connect.CodeUnauthenticated, errors.New("client certificate does not carry a SPIFFE ID of this trust domain"))
	if s.errWriter.IsSupported(r) {
		_ = s.errWriter.Write(w, r, err)
		return
	}
	http.Error(w, err.Message(), http.StatusUnauthorized)
}
