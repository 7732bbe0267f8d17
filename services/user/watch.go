package user

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security"
)

// DefaultHeartbeatInterval is how often a caught-up WatchUserChanges stream
// sends a heartbeat while no change happens.
const DefaultHeartbeatInterval = time.Second

// watchPageSize is how many changes a stream reads from the store at once:
// the memory a subscriber can cost, whatever its backlog.
const watchPageSize = 256

// ServiceOption configures a Service.
type ServiceOption interface {
	applyService(*Service)
}

type serviceOptionFunc func(*Service)

func (f serviceOptionFunc) applyService(s *Service) { f(s) }

// WithHeartbeatInterval sets how often a caught-up WatchUserChanges stream
// sends a heartbeat (default DefaultHeartbeatInterval). Subscribers use
// heartbeats to bound how stale their caches can get, so keep it well below
// their tolerance.
func WithHeartbeatInterval(d time.Duration) ServiceOption {
	return serviceOptionFunc(func(s *Service) {
		if d > 0 {
			s.heartbeat = d
		}
	})
}

// WatchUserChanges streams the change history from after_sequence on: the
// retained changes after it, then every change as it commits. Whenever the
// stream has sent everything committed so far it sends a heartbeat carrying
// that sequence, and again every heartbeat interval while nothing changes.
//
// When the history after after_sequence is no longer complete — it was
// pruned, or after_sequence is newer than any change (the database was
// replaced) — the stream first sends a reset, then the retained changes from
// the oldest on. The same happens if a subscriber falls behind the retention
// while it is connected. Sequences are consecutive and commit in order on
// both backends (see changes.go), so a gap always means lost history.
//
// The stream reads from the store, never from a buffer that writers fill:
// a slow subscriber costs at most one page of changes in memory and never
// delays a writer. Streams at the same position share the reads a change
// wakes them for (see sharedReads): a change committed wakes a thousand
// subscribers for a few queries, not a thousand. Changes committed by
// another replica sharing a PostgreSQL database wake the stream through
// the store's listener; and whatever the listener misses, each heartbeat
// follows a read of the table, so a change is sent within a heartbeat
// interval at worst.
func (s *Service) WatchUserChanges(ctx context.Context, req *userv1.WatchUserChangesRequest, stream *connect.ServerStream[userv1.WatchUserChangesResponse]) error {
	pos := req.GetAfterSequence()
	if pos < 0 {
		return invalidArgument("after_sequence", "must not be negative")
	}
	w := &watch{s: s, ctx: ctx, stream: stream, pos: pos}
	s.log.LogAttrs(ctx, slog.LevelInfo, "change feed opened",
		slog.String("caller", security.CallerID(ctx)), slog.Int64("after_sequence", pos))
	err := w.run()
	s.log.LogAttrs(ctx, slog.LevelInfo, "change feed closed",
		slog.String("caller", security.CallerID(ctx)), slog.Int64("sequence", w.pos), slog.Int("sent", w.sent),
		slog.String("code", codeOf(err)))
	return err
}

func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

// watch is one WatchUserChanges stream.
type watch struct {
	s      *Service
	ctx    context.Context
	stream *connect.ServerStream[userv1.WatchUserChangesResponse]
	pos    int64 // the last sequence sent (or the subscriber's position)
	sent   int   // changes sent
}

func (w *watch) run() error {
	oldest, latest, err := w.s.store.ChangeBounds(w.ctx)
	if err != nil {
		return w.s.storeError(w.ctx, "WatchUserChanges", "", err)
	}
	if w.pos > latest {
		if err := w.reset(oldest, latest); err != nil {
			return err
		}
	}
	var lastBeat time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	// share says whether this pass may take another stream's read: not the
	// first, nor one the heartbeat timer started (see sharedReads).
	share := false
	for {
		signal := w.s.store.ChangeSignal()
		var changes []*userv1.UserChange
		if share {
			changes, err = w.s.reads.changes(w.ctx, w.s.store, w.pos, signal)
		} else {
			changes, err = w.s.store.Changes(w.ctx, w.pos, watchPageSize)
		}
		if err != nil {
			return w.s.storeError(w.ctx, "WatchUserChanges", "", err)
		}
		if len(changes) > 0 && changes[0].GetSequence() > w.pos+1 {
			// The changes between pos and the first one read were pruned.
			_, latest, err := w.s.store.ChangeBounds(w.ctx)
			if err != nil {
				return w.s.storeError(w.ctx, "WatchUserChanges", "", err)
			}
			if err := w.reset(changes[0].GetSequence(), latest); err != nil {
				return err
			}
		}
		for _, c := range changes {
			if err := w.stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Change{Change: c}}); err != nil {
				return err
			}
			w.pos = c.GetSequence()
			w.sent++
		}
		if len(changes) == watchPageSize {
			share = true
			continue // there may be more to read
		}
		// Caught up with everything committed before the read.
		if since := time.Since(lastBeat); since >= w.s.heartbeat {
			beat := &userv1.WatchHeartbeat{LatestSequence: w.pos, Time: timestamppb.Now()}
			if err := w.stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Heartbeat{Heartbeat: beat}}); err != nil {
				return err
			}
			lastBeat = time.Now()
		}
		timer.Reset(w.s.heartbeat - time.Since(lastBeat))
		select {
		case <-w.ctx.Done():
			return rpc.StreamEnded(w.ctx)
		case <-signal:
			share = true
		case <-timer.C:
			share = false
		}
	}
}

// reset tells the subscriber to drop what it cached: the changes from
// oldest on follow.
func (w *watch) reset(oldest, latest int64) error {
	w.s.log.LogAttrs(w.ctx, slog.LevelWarn, "change feed reset: the subscriber's position is not in the retained history",
		slog.String("caller", security.CallerID(w.ctx)), slog.Int64("after_sequence", w.pos),
		slog.Int64("oldest_sequence", oldest), slog.Int64("latest_sequence", latest))
	err := w.stream.Send(&userv1.WatchUserChangesResponse{Event: &userv1.WatchUserChangesResponse_Reset_{Reset_: &userv1.WatchReset{OldestSequence: oldest, LatestSequence: latest}}})
	w.pos = max(oldest-1, 0)
	return err
}

// sharedReads lets WatchUserChanges streams at the same position share a
// read of the history. When a change commits, every caught-up stream wakes
// at the same position to read the same page: the first to get there
// reads, the others take its result.
//
// A stream takes the change signal, then reads; it must not miss a change
// whose notification came before it took the signal (a later one closes
// the signal, and it reads again). A read that began while the same signal
// was current began after every such notification, so after the changes
// were committed: it is as good as the stream's own. So a read is kept
// with the signal current when it began, and a stream takes it only if
// that is the signal the stream took.
//
// Changes a notification never announced (a PostgreSQL listener that lost
// its connection) are found by the reads a stream makes on its own: when
// it opens, and when its heartbeat timer fires — which is what bounds how
// late such a change arrives (one heartbeat interval), as before.
//
// At most maxSharedReads reads are kept, those of the current signal
// first; a stream that finds no room reads on its own. The changes of a
// read are shared by the streams that send them, read only.
type sharedReads struct {
	mu    sync.Mutex
	reads map[int64]*sharedRead // the latest read after each position
}

// maxSharedReads bounds the reads kept, and so the memory they hold (a
// page each): enough for subscribers a few positions apart.
const maxSharedReads = 16

// sharedRead is a read of the page of changes after a position.
type sharedRead struct {
	signal  <-chan struct{} // the change signal when the read began
	done    chan struct{}   // closed once changes and err are set
	changes []*userv1.UserChange
	err     error
}

// changes returns the page of changes after pos, read after signal, the
// store's change signal the caller took, became current: by the caller,
// or by another stream. A shared read that failed is retried as the
// caller's own: the failure may be its reader's (its context ended).
func (r *sharedReads) changes(ctx context.Context, store *Store, pos int64, signal <-chan struct{}) ([]*userv1.UserChange, error) {
	r.mu.Lock()
	if rd := r.reads[pos]; rd != nil && rd.signal == signal {
		r.mu.Unlock()
		select {
		case <-rd.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if rd.err == nil {
			return rd.changes, nil
		}
		return store.Changes(ctx, pos, watchPageSize)
	}
	current := store.ChangeSignal()
	if r.reads == nil {
		r.reads = map[int64]*sharedRead{}
	}
	if _, ok := r.reads[pos]; !ok && len(r.reads) >= maxSharedReads {
		// Make room: a read of an earlier signal is of no use to a stream
		// that takes the current one.
		for p, rd := range r.reads {
			if rd.signal != current {
				delete(r.reads, p)
			}
		}
	}
	if _, ok := r.reads[pos]; !ok && len(r.reads) >= maxSharedReads {
		r.mu.Unlock()
		return store.Changes(ctx, pos, watchPageSize)
	}
	rd := &sharedRead{signal: current, done: make(chan struct{})}
	r.reads[pos] = rd
	r.mu.Unlock()
	rd.changes, rd.err = store.Changes(ctx, pos, watchPageSize)
	close(rd.done)
	return rd.changes, rd.err
}
