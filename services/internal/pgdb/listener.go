package pgdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backoff of a Listener between two failed connection attempts.
const (
	ListenMinBackoff = 100 * time.Millisecond
	ListenMaxBackoff = 5 * time.Second
)

// Listener keeps a connection of its own LISTENing on a channel and calls
// a function with the payload of every notification sent to it — by any
// client of the database, this process included. PostgreSQL delivers a
// NOTIFY when the transaction that sent it commits, and drops those sent
// while the listener was disconnected; so when it connects again, the
// Listener calls the function once more, with an empty payload, for
// whatever it missed: the function must be "go and look", not "here is
// what changed".
//
// A connection that fails (the server restarts, or ends it with
// pg_terminate_backend) is replaced, retrying with backoff from
// ListenMinBackoff doubling to ListenMaxBackoff. A connection that dies
// silently is detected by TCP keepalive.
type Listener struct {
	cfg     *pgx.ConnConfig
	channel string
	notify  func(payload string)
	log     *slog.Logger
	cancel  context.CancelFunc
	done    chan struct{}
	conn    *pgx.Conn // the current connection, nil while reconnecting; only run uses it once Listen returns
}

// Listen connects to the database at url and LISTENs on channel before it
// returns, so a notification sent after Listen returns is not missed; then
// it calls notify with the payload of every notification (and with "" after
// every reconnection) until Close. notify runs on the Listener's goroutine and must not block.
// logger receives the losses and recoveries of the connection (nil:
// slog.Default()). Errors never hold the URL.
func Listen(ctx context.Context, url, channel string, notify func(payload string), logger *slog.Logger) (*Listener, error) {
	cfg, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	if channel == "" || notify == nil {
		return nil, errors.New("pgdb: listen: needs a channel and a function")
	}
	if logger == nil {
		logger = slog.Default()
	}
	l := &Listener{cfg: cfg, channel: channel, notify: notify, log: logger, done: make(chan struct{})}
	conn, err := l.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgdb: listen on %s: %w", channel, err)
	}
	l.conn = conn
	runCtx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go l.run(runCtx)
	return l, nil
}

// connect opens a connection and LISTENs on the channel.
func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, l.cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	return conn, nil
}

func (l *Listener) run(ctx context.Context) {
	defer close(l.done)
	defer l.setConn(nil)
	for {
		n, err := l.conn.WaitForNotification(ctx)
		if err == nil {
			l.notify(n.Payload)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		l.log.LogAttrs(ctx, slog.LevelWarn, "listener lost its connection; reconnecting",
			slog.String("channel", l.channel), slog.String("error", err.Error()))
		l.setConn(nil)
		if !l.reconnect(ctx) {
			return
		}
		l.log.LogAttrs(ctx, slog.LevelInfo, "listener reconnected", slog.String("channel", l.channel))
		// What was sent while we were away is lost: look again.
		l.notify("")
	}
}

// reconnect connects again, with backoff, until it succeeds (true) or ctx
// is done (false).
func (l *Listener) reconnect(ctx context.Context) bool {
	backoff := ListenMinBackoff
	timer := time.NewTimer(backoff)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
		}
		conn, err := l.connect(ctx)
		if err == nil {
			l.setConn(conn)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		backoff = min(2*backoff, ListenMaxBackoff)
		l.log.LogAttrs(ctx, slog.LevelWarn, "listener could not reconnect",
			slog.String("channel", l.channel), slog.String("error", err.Error()), slog.Duration("retry_in", backoff))
		timer.Reset(backoff)
	}
}

// setConn replaces the connection, closing the previous one.
func (l *Listener) setConn(conn *pgx.Conn) {
	old := l.conn
	l.conn = conn
	if old != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = old.Close(ctx)
	}
}

// Close stops the listener, closes its connection and waits for its
// goroutine to end.
func (l *Listener) Close() error {
	l.cancel()
	<-l.done
	return nil
}
