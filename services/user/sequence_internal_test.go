package user

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"testing"
	"time"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// plainSequenceInsert records a change the way a bigserial column would:
// nextval, which is not transactional. It is what the PostgreSQL store must
// not do.
const plainSequenceInsert = `INSERT INTO user_changes (sequence, user_id, kind, time)
VALUES (nextval('plain_change_sequence'), $1, $2, $3) RETURNING sequence`

// TestChangesBecomeVisibleInSequenceOrder reproduces the skipped change on
// PostgreSQL with two concurrent writers: A takes a sequence and has not
// committed; B takes the next and commits; a subscriber reads the feed,
// then resumes after the last change it read, and A commits. With a plain
// sequence the subscriber reads B's change alone, resumes after it, and
// never gets A's. With the store's sequence row B waits for A's commit, so
// the subscriber reads neither, then both, in order.
func TestChangesBecomeVisibleInSequenceOrder(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		insertChange string
		wantSkipped  bool
	}{
		"plain sequence":       {insertChange: plainSequenceInsert, wantSkipped: true},
		"store's sequence row": {insertChange: postgresDialect.insertChange, wantSkipped: false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s, err := OpenStore(ctx, PG.NewDatabase(t))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.db.ExecContext(ctx, "CREATE SEQUENCE plain_change_sequence"); err != nil {
				t.Fatal(err)
			}
			s.sql.insertChange = c.insertChange

			// A records its change and keeps its transaction open.
			txA, err := s.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = txA.Rollback() }()
			if err := s.recordChange(ctx, txA, "alice", userv1.UserChangeKind_USER_CHANGE_KIND_UPDATED, s.now()); err != nil {
				t.Fatal(err)
			}
			// B records the next change and commits, or waits for A.
			doneB := make(chan error, 1)
			go func() { doneB <- record(ctx, s, "bob") }()
			bWaited := waitDoneOrBlocked(t, s.db, doneB)

			// The subscriber reads what is visible, and keeps its position.
			first, err := s.Changes(ctx, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			var pos int64
			if len(first) > 0 {
				pos = first[len(first)-1].GetSequence()
			}
			if err := txA.Commit(); err != nil {
				t.Fatal(err)
			}
			if bWaited {
				if err := <-doneB; err != nil {
					t.Fatal(err)
				}
			}
			then, err := s.Changes(ctx, pos, 10)
			if err != nil {
				t.Fatal(err)
			}
			all, err := s.Changes(ctx, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			seen := append(sequences(first), sequences(then)...)
			t.Logf("B waited for A: %v; first read %v; resumed after %d and read %v; committed %v",
				bWaited, sequences(first), pos, sequences(then), sequences(all))
			if len(all) != 2 {
				t.Fatalf("committed changes %v, want 2", sequences(all))
			}
			skipped := !slices.Equal(seen, sequences(all))
			if skipped != c.wantSkipped {
				t.Fatalf("the subscriber saw %v of the committed %v: skipped %v, want %v", seen, sequences(all), skipped, c.wantSkipped)
			}
			if !c.wantSkipped && !bWaited {
				t.Fatal("B committed while A held its sequence: the writers were not serialized")
			}
		})
	}
}

// record records a change to user id in a transaction of its own.
func record(ctx context.Context, s *Store, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := s.recordChange(ctx, tx, id, userv1.UserChangeKind_USER_CHANGE_KIND_UPDATED, s.now()); err != nil {
		return err
	}
	return tx.Commit()
}

// waitDoneOrBlocked waits until the writer reporting on done has finished
// (false), or until a session of db's database waits for a lock (true).
func waitDoneOrBlocked(t *testing.T, db *sql.DB, done chan error) bool {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return false
		default:
		}
		var waiting int
		if err := db.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the second writer neither finished nor waited for a lock within a minute")
	return false
}

func sequences(cs []*userv1.UserChange) []int64 {
	out := make([]int64, len(cs))
	for i, c := range cs {
		out[i] = c.GetSequence()
	}
	return out
}

// TestConcurrentWritersNeverSkipAChange: writers on four stores (replicas)
// sharing a database record changes while a subscriber reads the feed
// after its position, as WatchUserChanges does. It must read every
// sequence from 1 to the last, once each, in order.
func TestConcurrentWritersNeverSkipAChange(t *testing.T) {
	t.Parallel()
	const (
		replicas = 4
		each     = 50
	)
	ctx := context.Background()
	url := PG.NewDatabase(t)
	stores := make([]*Store, replicas)
	for i := range stores {
		s, err := OpenStore(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores[i] = s
	}
	writers := make(chan error, replicas)
	for i, s := range stores {
		go func() {
			for n := range each {
				if err := record(ctx, s, fmt.Sprintf("user-%d-%d", i, n)); err != nil {
					writers <- err
					return
				}
			}
			writers <- nil
		}()
	}
	var (
		seen     []int64
		pos      int64
		finished int
	)
	for finished < replicas || pos < replicas*each {
		select {
		case err := <-writers:
			if err != nil {
				t.Fatal(err)
			}
			finished++
		default:
		}
		cs, err := stores[0].Changes(ctx, pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			seen = append(seen, c.GetSequence())
			pos = c.GetSequence()
		}
		if finished == replicas && len(cs) == 0 {
			break
		}
	}
	want := make([]int64, replicas*each)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("the subscriber read %d changes, want 1..%d once each in order: %v", len(seen), len(want), seen)
	}
}
