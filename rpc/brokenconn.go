package rpc

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"connectrpc.com/connect"
)

// brokenConnUnavailable reports a unary call whose connection broke before
// the server's answer was complete — a GOAWAY from a server going away, an
// EOF or a reset in the middle of the message — as unavailable, the code
// gRPC gives it, rather than connect-go's unknown (or, in gRPC, internal
// "protocol error: incomplete envelope"). The server never finished
// answering, so the caller may retry elsewhere, and a service calling
// another (the order service asking the user service) tells its own caller
// so instead of failing with internal. Errors the server sent (wire errors)
// and errors of a call whose own context ended are left as they are.
type brokenConnUnavailable struct{}

func (brokenConnUnavailable) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		var ce *connect.Error
		if err != nil && ctx.Err() == nil && errors.As(err, &ce) && !connect.IsWireError(err) &&
			(ce.Code() == connect.CodeUnknown || transportBroke(err)) {
			return nil, connect.NewError(connect.CodeUnavailable, ce.Unwrap())
		}
		return res, err
	}
}

// transportBroke reports whether err comes from a connection that broke.
func transportBroke(err error) bool {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	// net/http's HTTP/2 transport reports a peer that went away with an
	// unexported error type: its text is the only handle on it.
	return strings.Contains(err.Error(), "server sent GOAWAY")
}

func (brokenConnUnavailable) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (brokenConnUnavailable) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
