package rpc

import (
	"context"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/security"
)

// accessLog logs one line per call that reached the interceptor chain: the
// procedure, the calling workload, the result code and the duration.
type accessLog struct {
	log *slog.Logger
}

func newAccessLog(l *slog.Logger) *accessLog { return &accessLog{log: l} }

func (a *accessLog) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		res, err := next(ctx, req)
		a.record(ctx, req.Spec().Procedure, start, err)
		return res, err
	}
}

func (a *accessLog) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *accessLog) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		a.record(ctx, conn.Spec().Procedure, start, err)
		return err
	}
}

func (a *accessLog) record(ctx context.Context, procedure string, start time.Time, err error) {
	if !a.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
	}
	peer := ""
	if p, ok := security.FromContext(ctx); ok {
		peer = p.Workload.ID.String()
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "rpc",
		slog.String("procedure", procedure),
		slog.String("peer", peer),
		slog.String("code", code),
		slog.Duration("duration", time.Since(start)),
	)
}
