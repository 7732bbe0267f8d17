package user

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// The change history: every change to a user (Create, Update, the demo
// seed) is written to the user_changes table in the transaction that makes
// it, with a sequence that strictly increases for the life of the database.
// Writers prune the history to the Retention in the same transaction, and
// close the store's change signal after they commit; readers (the
// WatchUserChanges streams) wait on that signal and then read the table
// after their position, so a change committed while a reader was busy is
// read on its next pass, and no reader ever holds up a writer.
//
// The sequence rule: changes commit in sequence order, so a reader that has
// seen change n has seen every change before it, and can resume "after n".
// SQLite has one writer at a time. On PostgreSQL, writers take the next
// sequence by updating a row that stays locked until they commit (see
// migrations/postgres/0003_user_changes.sql): writers of changes commit one
// after another, readers never wait. Sequences are consecutive on both
// backends (a rolled-back writer's number is taken again).
//
// With PostgreSQL, several replicas share the table. A writer also sends a
// NOTIFY in its transaction, delivered when it commits; every other
// replica's listener closes its store's change signal on it, so every
// replica's readers wake, whichever replica wrote.
//
// Password hashes are credentials, not part of the user a subscriber caches:
// setting one records no change.

// Retention bounds the change history. A subscriber whose position is older
// than the oldest retained change gets a reset.
type Retention struct {
	// MaxChanges keeps at most this many of the newest changes; 0 sets no
	// count bound.
	MaxChanges int
	// MaxAge drops changes older than this; 0 sets no age bound.
	MaxAge time.Duration
}

// Defaults of the retention: a subscriber may be away for a week, or
// 10,000 changes, before it has to start over.
const (
	DefaultRetentionChanges = 10000
	DefaultRetentionAge     = 7 * 24 * time.Hour
)

// DefaultRetention returns the default retention: 10,000 changes, 7 days.
func DefaultRetention() Retention {
	return Retention{MaxChanges: DefaultRetentionChanges, MaxAge: DefaultRetentionAge}
}

// Validate reports a retention that keeps an unbounded or negative history.
func (r Retention) Validate() error {
	switch {
	case r.MaxChanges < 0:
		return fmt.Errorf("retention: max changes %d is negative", r.MaxChanges)
	case r.MaxAge < 0:
		return fmt.Errorf("retention: max age %s is negative", r.MaxAge)
	case r.MaxChanges == 0 && r.MaxAge == 0:
		return errors.New("retention: set a count or an age bound (or both)")
	}
	return nil
}

// SetRetention sets the bounds the history is pruned to, from the next
// change on. An invalid retention is refused and the current one kept.
func (s *Store) SetRetention(r Retention) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("user store: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retention = r
	return nil
}

func (s *Store) currentRetention() Retention {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retention
}

// ChangeSignal returns a channel that is closed when the next change is
// committed: by this store, or with PostgreSQL by any replica sharing the
// database (and also whenever the listener reconnects, since it may have
// missed some). Take it before reading the history, so that a change
// committed after the read is not missed.
func (s *Store) ChangeSignal() <-chan struct{} { return s.changed.Wait() }

// recordChange writes the change of kind to user id in tx, announces it to
// the other replicas (PostgreSQL), and prunes the history to the retention.
// The change's time is now.
func (s *Store) recordChange(ctx context.Context, tx *sql.Tx, id string, kind userv1.UserChangeKind, now time.Time) error {
	name, ok := strings.CutPrefix(kind.String(), "USER_CHANGE_KIND_")
	if !ok || kind == userv1.UserChangeKind_USER_CHANGE_KIND_UNSPECIFIED {
		return fmt.Errorf("record change: kind %v", kind)
	}
	var seq int64
	if err := tx.QueryRowContext(ctx, s.sql.insertChange, id, name, now.UnixNano()).Scan(&seq); err != nil {
		return fmt.Errorf("record change: %w", err)
	}
	if s.sql.notifyChange != "" {
		if _, err := tx.ExecContext(ctx, s.sql.notifyChange, strconv.FormatInt(seq, 10)+" "+s.id); err != nil {
			return fmt.Errorf("record change: notify: %w", err)
		}
	}
	// The change just written is never pruned: MaxChanges ≥ 1 keeps it, and
	// its time is now. So the newest sequence is always in the table.
	r := s.currentRetention()
	if r.MaxChanges > 0 {
		if _, err := tx.ExecContext(ctx, "DELETE FROM user_changes WHERE sequence <= $1", seq-int64(r.MaxChanges)); err != nil {
			return fmt.Errorf("prune changes: %w", err)
		}
	}
	if r.MaxAge > 0 {
		if _, err := tx.ExecContext(ctx, "DELETE FROM user_changes WHERE time < $1", now.Add(-r.MaxAge).UnixNano()); err != nil {
			return fmt.Errorf("prune changes: %w", err)
		}
	}
	return nil
}

// Changes returns up to limit changes with a sequence above after, oldest
// first.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]*userv1.UserChange, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("user store: changes: limit %d", limit)
	}
	rows, err := s.db.QueryContext(ctx,
		"SELECT sequence, user_id, kind, time FROM user_changes WHERE sequence > $1 ORDER BY sequence LIMIT $2", after, limit)
	if err != nil {
		return nil, fmt.Errorf("user store: changes: %w", err)
	}
	defer rows.Close()
	var changes []*userv1.UserChange
	for rows.Next() {
		var (
			c    userv1.UserChange
			kind string
			t    int64
		)
		if err := rows.Scan(&c.Sequence, &c.UserId, &kind, &t); err != nil {
			return nil, fmt.Errorf("user store: changes: %w", err)
		}
		v, ok := userv1.UserChangeKind_value["USER_CHANGE_KIND_"+kind]
		if !ok {
			return nil, fmt.Errorf("user store: change %d: unknown kind %q", c.Sequence, kind)
		}
		c.Kind = userv1.UserChangeKind(v)
		c.Time = timestamppb.New(time.Unix(0, t).UTC())
		changes = append(changes, &c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("user store: changes: %w", err)
	}
	return changes, nil
}

// ChangeBounds returns the oldest retained and the newest sequence, both 0
// when no change was ever recorded.
func (s *Store) ChangeBounds(ctx context.Context) (oldest, latest int64, err error) {
	if err := s.db.QueryRowContext(ctx,
		"SELECT COALESCE(MIN(sequence), 0), COALESCE(MAX(sequence), 0) FROM user_changes").Scan(&oldest, &latest); err != nil {
		return 0, 0, fmt.Errorf("user store: change bounds: %w", err)
	}
	return oldest, latest, nil
}
