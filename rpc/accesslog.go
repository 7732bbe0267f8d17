package rpc

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/security"
)

// maxLoggedPath bounds the request path in the access log: a peer of the
// trust domain may send any path, and the log is not the place to keep it
// whole.
const maxLoggedPath = 200

// callRecord is what the front door learns about one request while it goes
// down the chain: its id, the caller (set by authenticate, or just the
// workload when the token is refused), the result code (set by the recorder
// interceptor, or by authenticate when it refuses the request) and the
// response status (its statusWriter). One allocation per request holds it
// all.
type callRecord struct {
	w        statusWriter
	id       string
	workload *security.Workload
	user     *security.User
	code     connect.Code
	coded    bool
	get      bool          // an HTTP GET (a Connect GET call), for the request gate
	body     bodyWatch     // the request body, under WithBodyReadTimeout
	decision *decisionNote // a decision taken before the call's span, when tracing
}

type callRecordKey struct{}

func recordOf(ctx context.Context) *callRecord {
	rec, _ := ctx.Value(callRecordKey{}).(*callRecord)
	return rec
}

// setCode records the result of a call, err, on its record.
func (rec *callRecord) setCode(err error) {
	var code connect.Code
	if err != nil {
		code = connect.CodeOf(err)
	}
	rec.set(code)
}

// set records the result code of a call (0 for ok) on its record.
func (rec *callRecord) set(code connect.Code) {
	if rec != nil {
		rec.code, rec.coded = code, true
	}
}

// front is the server's HTTP handler, in front of the mux. It gives the
// request its id (the client's X-Request-Id when ValidRequestID accepts it,
// else a new one) and returns the id in the response header; authenticates
// the caller (authenticate) before any message is read; and writes the
// access log: exactly one line per request — including those refused before
// any RPC code runs — with the procedure, the calling workload and user, the
// result code, the duration and the id.
func (s *Server) front(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &callRecord{w: statusWriter{ResponseWriter: w}, get: r.Method == http.MethodGet}
		if ids := r.Header[RequestIDHeader]; len(ids) == 1 && ValidRequestID(ids[0]) {
			rec.id = ids[0]
			w.Header()[RequestIDHeader] = ids // the request's own slice: no copy
		} else {
			rec.id = s.requestIDs.next()
			w.Header().Set(RequestIDHeader, rec.id)
		}
		ctx := context.WithValue(r.Context(), callRecordKey{}, rec)
		if p, ok := s.authenticate(ctx, &rec.w, r, rec); ok {
			r := r.WithContext(security.NewContext(ctx, p))
			s.watchBody(r, rec)
			next.ServeHTTP(&rec.w, r)
			rec.body.abandon()
		}
		s.logAccess(ctx, r, rec, time.Since(start))
	})
}

func (s *Server) logAccess(ctx context.Context, r *http.Request, rec *callRecord, elapsed time.Duration) {
	if !s.accessLog.Enabled(ctx, slog.LevelInfo) {
		return
	}
	path := r.URL.Path
	if len(path) > maxLoggedPath {
		path = path[:maxLoggedPath] + "…"
	}
	peer, subject := "", ""
	if rec.workload != nil {
		peer = rec.workload.ID.String()
	}
	if rec.user != nil {
		subject = rec.user.Subject
	}
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs,
		slog.String("procedure", path),
		slog.String("peer", peer),
		slog.String("subject", subject),
	)
	if rec.user != nil && rec.user.Actor != "" {
		attrs = append(attrs, slog.String("act", rec.user.Actor))
	}
	attrs = append(attrs,
		slog.String("code", resultCode(rec)),
		slog.Int("http_status", rec.w.statusCode()),
		slog.Duration("duration", elapsed),
		// Here rather than by LogHandler (accessLog is the logger without it),
		// so the record grows its attribute slice once.
		slog.String("request_id", rec.id),
	)
	s.accessLog.LogAttrs(ctx, slog.LevelInfo, "rpc", attrs...)
}

// resultCode is the Connect code of the call: what the chain recorded, or,
// for a request that failed before any interceptor ran (an unknown
// procedure, an undecodable message), what the response says — a gRPC
// status in the headers or trailers, else the HTTP status.
func resultCode(rec *callRecord) string {
	if rec.coded {
		return codeString(rec.code)
	}
	sw := &rec.w
	h := sw.Header()
	status := h.Get("Grpc-Status")
	if status == "" {
		status = h.Get(http.TrailerPrefix + "Grpc-Status")
	}
	if status != "" {
		if n, err := strconv.ParseUint(status, 10, 32); err == nil {
			return codeString(connect.Code(n))
		}
	}
	switch st := sw.statusCode(); {
	case st < 400:
		return "ok"
	case st == http.StatusBadRequest:
		return connect.CodeInvalidArgument.String()
	case st == http.StatusUnauthorized:
		return connect.CodeUnauthenticated.String()
	case st == http.StatusForbidden:
		return connect.CodePermissionDenied.String()
	case st == http.StatusNotFound, st == http.StatusMethodNotAllowed, st == http.StatusUnsupportedMediaType:
		return connect.CodeUnimplemented.String()
	case st == http.StatusRequestEntityTooLarge, st == http.StatusTooManyRequests:
		return connect.CodeResourceExhausted.String()
	case st == http.StatusNotImplemented:
		return connect.CodeUnimplemented.String()
	case st == http.StatusServiceUnavailable:
		return connect.CodeUnavailable.String()
	case st == http.StatusGatewayTimeout:
		return connect.CodeDeadlineExceeded.String()
	}
	return connect.CodeUnknown.String()
}

func codeString(c connect.Code) string {
	if c == 0 {
		return "ok"
	}
	return c.String()
}

// statusWriter remembers the status code of a response. It keeps the
// http.Flusher that streaming RPCs need, and Unwrap for
// http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// recorder is the outermost RPC interceptor inside the tracing one: it
// notes the call's result code for the access log and puts the caller's
// identity on the call's trace span.
type recorder struct {
	tel *serverTelemetry
}

func (r recorder) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		r.tel.annotateCaller(ctx)
		res, err := next(ctx, req)
		recordOf(ctx).setCode(err)
		return res, err
	}
}

func (r recorder) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (r recorder) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		r.tel.annotateCaller(ctx)
		err := next(ctx, conn)
		recordOf(ctx).setCode(err)
		return err
	}
}
