package rpc

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/security"
)

// Long-lived streams outlive the facts they were authorized on. Two of
// those facts change while a stream is open, and the server ends the stream
// when they do, whatever its handler is doing:
//
//   - the user's token expires: a stream whose Principal has a User ends
//     with unauthenticated ("token expired") at User.ExpiresAt, so a token
//     cannot be stretched past its lifetime by keeping a stream open; the
//     client reconnects with a fresh token;
//   - the server drains: when Serve's context is done, every open stream
//     ends with unavailable ("server is draining") at once, before the
//     server waits for in-flight calls, so its clients reconnect elsewhere
//     instead of holding the drain for its whole grace period. Unary calls
//     in flight are left to finish; streams that open during the drain are
//     refused with unavailable.
//
// Ending a stream cancels the handler's context (its cause is the error),
// makes Send and Receive fail with the error, and unblocks a Receive that
// waits for the client (through the request's read deadline); the client
// gets the error as the stream's status. A handler blocked in Send because
// its client does not read gets StreamWriteGrace more, then the stream is
// reset.

// StreamWriteGrace is how long a stream that has been ended may still take
// to write its last messages and status before it is reset.
const StreamWriteGrace = 5 * time.Second

// streamGuard is the interceptor that ends streams, and the set of open
// streams the server drains.
type streamGuard struct {
	mu       sync.Mutex
	draining bool
	open     map[*guardedStream]struct{}
}

var _ connect.Interceptor = (*streamGuard)(nil)

func newStreamGuard() *streamGuard {
	return &streamGuard{open: map[*guardedStream]struct{}{}}
}

func tokenExpiredError() error {
	err := connect.NewError(connect.CodeUnauthenticated, errors.New("token expired"))
	err.Meta().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="token expired"`)
	return err
}

func drainingError() error {
	return connect.NewError(connect.CodeUnavailable, errors.New("server is draining"))
}

func (g *streamGuard) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (g *streamGuard) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (g *streamGuard) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		st := &guardedStream{StreamingHandlerConn: conn, cancel: cancel}
		if rec := recordOf(ctx); rec != nil {
			// The request's response writer, kept by the server's front
			// middleware: the guard sets the stream's deadlines through it.
			st.rc = http.NewResponseController(&rec.w)
		}
		if !g.add(st) {
			return drainingError()
		}
		defer g.remove(st)
		defer addStream(ctx, st)() // WithMaxConnectionAge ends it with its connection
		if p, ok := security.FromContext(ctx); ok && p.User != nil && !p.User.ExpiresAt.IsZero() {
			expiry := time.AfterFunc(time.Until(p.User.ExpiresAt), func() { st.end(tokenExpiredError()) })
			defer expiry.Stop()
		}
		err := next(ctx, st)
		if cause := st.finish(); cause != nil {
			return cause
		}
		return err
	}
}

func (g *streamGuard) add(st *guardedStream) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining {
		return false
	}
	g.open[st] = struct{}{}
	return true
}

func (g *streamGuard) remove(st *guardedStream) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.open, st)
}

// drain ends every open stream with unavailable, refuses streams opened
// from now on, and returns how many it ended.
func (g *streamGuard) drain() int {
	g.mu.Lock()
	g.draining = true
	open := make([]*guardedStream, 0, len(g.open))
	for st := range g.open {
		open = append(open, st)
	}
	g.mu.Unlock()
	for _, st := range open {
		st.end(drainingError())
	}
	return len(open)
}

// guardedStream is a stream the guard can end.
type guardedStream struct {
	connect.StreamingHandlerConn
	cancel context.CancelCauseFunc
	rc     *http.ResponseController // nil when the request did not come through the server's middleware

	mu    sync.Mutex
	done  bool  // the handler has returned: the response writer is no longer ours to touch
	cause error // why the stream was ended; nil while it runs
}

// end ends the stream with cause, unless it has ended already.
func (s *guardedStream) end(cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.cause != nil {
		return
	}
	s.cause = cause
	s.cancel(cause)
	if s.rc != nil {
		// A Receive waiting for the client fails now; a Send the client does
		// not read fails after the grace. Errors mean the writer cannot set
		// deadlines, and then the context alone has to do.
		_ = s.rc.SetReadDeadline(time.Now())
		_ = s.rc.SetWriteDeadline(time.Now().Add(StreamWriteGrace))
	}
}

// finish marks the handler as returned and reports why the stream was
// ended, if it was.
func (s *guardedStream) finish() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	return s.cause
}

func (s *guardedStream) ended() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cause
}

func (s *guardedStream) Receive(msg any) error {
	if err := s.ended(); err != nil {
		return err
	}
	err := s.StreamingHandlerConn.Receive(msg)
	if cause := s.ended(); err != nil && cause != nil {
		return cause
	}
	return err
}

func (s *guardedStream) Send(msg any) error {
	if err := s.ended(); err != nil {
		return err
	}
	err := s.StreamingHandlerConn.Send(msg)
	if cause := s.ended(); err != nil && cause != nil {
		return cause
	}
	return err
}

// StreamEnded returns the error a streaming handler should return once its
// context is done: the *connect.Error the server ended the stream with
// (token expired, server draining), or canceled when the client went away.
// The server reports the former whatever the handler returns; this lets
// the handler's own logs agree.
func StreamEnded(ctx context.Context) error {
	cause := context.Cause(ctx)
	if ce := new(connect.Error); errors.As(cause, &ce) {
		return ce
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, cause)
	}
	return connect.NewError(connect.CodeCanceled, cause)
}
