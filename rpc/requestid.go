package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"sync/atomic"

	"github.com/palisade-rpc/palisade/rpc/internal/header"
)

// RequestIDHeader carries a call's request id, in requests and responses.
const RequestIDHeader = "X-Request-Id"

// MaxRequestIDLen is the longest request id the server accepts from a
// client (64 bytes).
const MaxRequestIDLen = header.MaxRequestIDLen

// ValidRequestID reports whether id is a request id the server accepts from
// a client: 1 to MaxRequestIDLen characters of [A-Za-z0-9._-]. Anything else
// (empty, longer, spaces, quotes, control characters) is replaced by a
// generated id, so an id can be logged and echoed without escaping.
func ValidRequestID(id string) bool { return header.ValidRequestID(id) }

type requestIDKey struct{}

// WithRequestID returns a copy of ctx carrying the request id id. The server
// does this for every call; a client made by NewClient sends the id in ctx
// as X-Request-Id, so a call one service makes while serving another carries
// the same id and the logs of both can be joined on it.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestIDFromContext returns the request id of the call ctx belongs to:
// the one set with WithRequestID, else the one the server gave the call.
func RequestIDFromContext(ctx context.Context) (string, bool) {
	if id, ok := ctx.Value(requestIDKey{}).(string); ok && id != "" {
		return id, true
	}
	if rec := recordOf(ctx); rec != nil {
		return rec.id, true
	}
	return "", false
}

// requestIDs generates request ids: a random per-server prefix and a
// counter, unique without a system call per request.
type requestIDs struct {
	prefix string
	n      atomic.Uint64
}

func newRequestIDs() *requestIDs {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return &requestIDs{prefix: hex.EncodeToString(b[:]) + "-"}
}

func (g *requestIDs) next() string {
	var buf [40]byte
	b := append(buf[:0], g.prefix...)
	return string(strconv.AppendUint(b, g.n.Add(1), 10))
}

// withoutLogHandler returns h without the LogHandler wrapper.
func withoutLogHandler(h slog.Handler) slog.Handler {
	if rh, ok := h.(*requestIDHandler); ok {
		return rh.next
	}
	return h
}

// LogHandler wraps h so that every record logged with a context carrying a
// request id (the ...Context methods of slog.Logger, LogAttrs) gets a
// "request_id" attribute: every line a call logs — the access log, the
// decision log, the handler's own lines — can be found by the call's id.
// Wrapping a handler twice adds the attribute once.
func LogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(*requestIDHandler); ok {
		return h
	}
	return &requestIDHandler{next: h}
}

type requestIDHandler struct {
	next slog.Handler
}

func (h *requestIDHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx != nil {
		if id, ok := RequestIDFromContext(ctx); ok {
			r.AddAttrs(slog.String("request_id", id))
		}
	}
	return h.next.Handle(ctx, r)
}

func (h *requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &requestIDHandler{next: h.next.WithAttrs(attrs)}
}

func (h *requestIDHandler) WithGroup(name string) slog.Handler {
	return &requestIDHandler{next: h.next.WithGroup(name)}
}
