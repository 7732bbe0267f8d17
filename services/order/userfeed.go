package order

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// ChangeFeed is what the cache needs from the user service: its change
// feed. The generated userv1connect.UserServiceClient satisfies it.
type ChangeFeed interface {
	WatchUserChanges(context.Context, *userv1.WatchUserChangesRequest) (*connect.ServerStreamForClient[userv1.WatchUserChangesResponse], error)
}

// errFeedSilent ends a stream on which nothing arrived for Liveness.
var errFeedSilent = errors.New("the user change feed was silent for too long")

// Run subscribes to feed and applies its changes to the cache until ctx is
// done, then closes Done. When the stream ends or stays silent for
// Liveness, Run resubscribes after a jittered exponential backoff, resuming
// after the last sequence applied — on another replica of the user service
// when feed is a client of several (rpc.WithEndpoints) and the one it
// followed has gone: any replica serves the same history. It returns ctx's
// error; a second call returns an error at once.
func (c *UserCache) Run(ctx context.Context, feed ChangeFeed) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("order: user cache: Run was already called")
	}
	defer close(c.done)
	defer c.down()
	backoff := c.opts.MinBackoff
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.mu.Lock()
			c.stats.Reconnects++
			c.mu.Unlock()
		}
		caughtUp, err := c.follow(ctx, feed)
		c.down()
		if ctx.Err() != nil {
			c.log.Info("user change feed stopped", "sequence", c.position())
			return ctx.Err()
		}
		if caughtUp {
			backoff = c.opts.MinBackoff
		}
		// Equal jitter: somewhere in the upper half of the backoff, so that
		// replicas cut off together do not come back together.
		delay := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("user change feed lost; the user cache is bypassed until it catches up",
			"error", err.Error(), "sequence", c.position(), "retry_in", delay.String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			c.log.Info("user change feed stopped", "sequence", c.position())
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, c.opts.MaxBackoff)
	}
}

// follow runs one subscription until it ends, and reports whether it caught
// up (got a heartbeat) before it did.
func (c *UserCache) follow(ctx context.Context, feed ChangeFeed) (caughtUp bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(c.opts.Liveness, func() { cancel(errFeedSilent) })
	defer watchdog.Stop()

	after := c.position()
	c.log.Info("user change feed subscribing", "after_sequence", after)
	stream, err := feed.WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{AfterSequence: after})
	if err != nil {
		return false, err
	}
	defer stream.Close()
	replayed := 0
	for stream.Receive() {
		watchdog.Reset(c.opts.Liveness)
		switch ev := stream.Msg().GetEvent().(type) {
		case *userv1.WatchUserChangesResponse_Change:
			applied, ok := c.applyChange(ev.Change)
			if !ok {
				continue
			}
			if !caughtUp {
				replayed++
			}
			c.logChange(ctx, applied, caughtUp)
			c.observe(applied)
		case *userv1.WatchUserChangesResponse_Reset_:
			applied := c.applyReset(ev.Reset_)
			c.log.Warn("user change feed reset: history lost; user cache flushed",
				"oldest_sequence", ev.Reset_.GetOldestSequence(), "latest_sequence", ev.Reset_.GetLatestSequence())
			c.observe(applied)
		case *userv1.WatchUserChangesResponse_Heartbeat:
			c.applyHeartbeat(ev.Heartbeat)
			if !caughtUp {
				caughtUp = true
				c.log.Info("user change feed caught up; the user cache is live",
					"sequence", c.position(), "replayed", replayed)
			}
		}
	}
	err = stream.Err()
	if cause := context.Cause(ctx); errors.Is(cause, errFeedSilent) {
		err = cause
	}
	if err == nil {
		err = errors.New("the user service ended the feed")
	}
	return caughtUp, err
}

// logChange logs an applied change: at Info ("user cache invalidated") once
// the feed has caught up, at Debug while it replays what it missed.
func (c *UserCache) logChange(ctx context.Context, ev UserCacheEvent, live bool) {
	level, msg := slog.LevelInfo, "user cache invalidated"
	if !live {
		level, msg = slog.LevelDebug, "user cache invalidated (replay)"
	}
	c.log.LogAttrs(ctx, level, msg,
		slog.String("user_id", ev.Change.GetUserId()),
		slog.Int64("sequence", ev.Change.GetSequence()),
		slog.String("kind", ev.Change.GetKind().String()),
		slog.Bool("was_cached", ev.Dropped))
}

func (c *UserCache) observe(ev UserCacheEvent) {
	if c.opts.Observe != nil {
		c.opts.Observe(ev)
	}
}
