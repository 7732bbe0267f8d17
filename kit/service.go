package kit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Service is a service being run by the kit, as its setup sees it.
type Service struct {
	// Server is the RPC server: mount the service's handlers on it
	// (rpc.Mount). The kit serves it on --addr once setup returns.
	Server *rpc.Server
	// Source is the workload's certificate and trust bundle, from files or
	// the Workload API, kept rotated by the kit. Give it to the service's
	// clients (rpc.NewClient) with ClientOptions.
	Source mtls.Source
	// Logger is the service's logger (--log-level, --log-format): every
	// line carries the service's name and, for a call, its request id.
	Logger *slog.Logger
	// ID is the workload's SPIFFE ID, from its certificate.
	ID spiffeid.ID

	ctx           context.Context // ends when the service begins to stop
	clientOptions []rpc.ClientOption
	loops         *loops

	mu       sync.Mutex
	cleanups []func() error
}

// ClientOptions returns the options every client this service makes
// should have — its logger, trust domain (--trust-domain) and telemetry, so
// that a call it makes joins the trace of the call it serves — for
// rpc.NewClient and rpc.NewHTTPClient with s.Source, before the client's
// own.
func (s *Service) ClientOptions() []rpc.ClientOption {
	return slices.Clone(s.clientOptions)
}

// Context returns the service's context: it is done when the service
// begins to stop (the context of Run ends, or a loop failed). Use it for
// the work of setup (opening a database, say), so that a signal during a
// slow start stops it.
func (s *Service) Context() context.Context { return s.ctx }

// Go runs loop in a goroutine of its own, now, with a context that ends
// when the service begins to stop (the server drains meanwhile). The kit
// joins it before Run returns. If loop returns an error other than its
// context's, the error is logged at ERROR with name and the service stops:
// Run returns it (wrapped with name) and Main exits 1. A loop returning
// nil before the service stops is logged and not restarted. Go called
// after the service has stopped runs nothing, and logs that at ERROR.
func (s *Service) Go(name string, loop func(ctx context.Context) error) {
	s.loops.start(s.ctx, name, loop)
}

// Cleanup registers f to run once the server has drained and every loop
// has returned: closing a database, say. Cleanups run last registered
// first; an error is logged and returned by Run.
func (s *Service) Cleanup(f func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// runCleanups runs the cleanups, last registered first.
func (s *Service) runCleanups() error {
	s.mu.Lock()
	fs := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	var errs []error
	for _, f := range slices.Backward(fs) {
		if err := f(); err != nil {
			s.Logger.Error("cleanup failed", "error", err.Error())
			errs = append(errs, fmt.Errorf("cleanup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// loops are the goroutines of a service's background loops. The first one
// to fail stops the service.
type loops struct {
	log  *slog.Logger
	stop context.CancelCauseFunc // of the service's context

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	errs   []error // of the loops that failed, in order
}

func newLoops(log *slog.Logger, stop context.CancelCauseFunc) *loops {
	return &loops{log: log, stop: stop}
}

// start runs loop with ctx, unless the loops have been joined.
func (l *loops) start(ctx context.Context, name string, loop func(context.Context) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		l.log.Error("background loop started after the service stopped; not run", "loop", name)
		return
	}
	l.wg.Go(func() {
		err := loop(ctx)
		switch {
		case err == nil:
			if ctx.Err() == nil {
				l.log.Info("background loop returned", "loop", name)
			}
		case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
			// Told to stop, it stopped.
		default:
			l.log.Error("background loop failed; stopping the service", "loop", name, "error", err.Error())
			err = fmt.Errorf("%s: %w", name, err)
			l.mu.Lock()
			l.errs = append(l.errs, err)
			l.mu.Unlock()
			l.stop(err)
		}
	})
}

// wait waits for every loop started and returns the failures, joined.
// Loops started afterwards are refused.
func (l *loops) wait() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.errs...)
}
