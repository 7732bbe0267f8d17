package user_test

import (
	"context"
	"errors"
	"testing"
	"time"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/services/user"
)

const (
	created     = userv1.UserChangeKind_USER_CHANGE_KIND_CREATED
	updated     = userv1.UserChangeKind_USER_CHANGE_KIND_UPDATED
	deactivated = userv1.UserChangeKind_USER_CHANGE_KIND_DEACTIVATED
)

type change struct {
	seq  int64
	id   string
	kind userv1.UserChangeKind
}

func changes(t *testing.T, s *user.Store, after int64) []change {
	t.Helper()
	cs, err := s.Changes(context.Background(), after, 1000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]change, len(cs))
	for i, c := range cs {
		out[i] = change{c.GetSequence(), c.GetUserId(), c.GetKind()}
		if c.GetTime().AsTime().IsZero() {
			t.Errorf("change %d has no time", c.GetSequence())
		}
	}
	return out
}

func wantChanges(t *testing.T, got []change, want ...change) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("changes %v; want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("changes %v; want %v", got, want)
		}
	}
}

// TestEveryChangeIsRecordedWithItsSequence: seeding, creating, updating and
// deactivating each record one change, in order, with consecutive
// sequences; a write that fails records nothing.
func TestEveryChangeIsRecordedWithItsSequence(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		if oldest, latest, err := s.ChangeBounds(ctx); err != nil || oldest != 0 || latest != 0 {
			t.Fatalf("bounds of an empty history: %d, %d, %v", oldest, latest, err)
		}
		signal := s.ChangeSignal()
		if _, err := s.SeedDemoUsers(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-signal:
		default:
			t.Fatal("seeding did not close the change signal")
		}
		if _, err := s.Create(ctx, &userv1.User{Id: "carol", DisplayName: "Carol", Email: "carol@example.com", Active: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, &userv1.User{Id: "alice", DisplayName: "Alice L."}, []string{"display_name"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, &userv1.User{Id: "bob", Active: false}, []string{"active"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, &userv1.User{Id: "bob", Active: true}, []string{"active"}); err != nil {
			t.Fatal(err)
		}

		// Failed writes change nothing and record nothing, nor wake anyone.
		signal = s.ChangeSignal()
		if _, err := s.Create(ctx, &userv1.User{Id: "carol", DisplayName: "Again", Email: "c@example.com"}); !errors.Is(err, user.ErrExists) {
			t.Fatalf("duplicate create: %v", err)
		}
		if _, err := s.Update(ctx, &userv1.User{Id: "zed", DisplayName: "Zed"}, []string{"display_name"}); !errors.Is(err, user.ErrNotFound) {
			t.Fatalf("update of a missing user: %v", err)
		}
		if err := s.SetPasswordHash(ctx, "alice", "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-signal:
			t.Fatal("a failed write or a password change closed the change signal")
		default:
		}

		wantChanges(t, changes(t, s, 0),
			change{1, "alice", created}, change{2, "bob", created}, change{3, "admin", created},
			change{4, "carol", created}, change{5, "alice", updated}, change{6, "bob", deactivated},
			change{7, "bob", updated})
		wantChanges(t, changes(t, s, 5), change{6, "bob", deactivated}, change{7, "bob", updated})
		wantChanges(t, changes(t, s, 7))
		if oldest, latest, err := s.ChangeBounds(ctx); err != nil || oldest != 1 || latest != 7 {
			t.Fatalf("bounds: %d, %d, %v; want 1, 7", oldest, latest, err)
		}
	})
}

// TestRetentionByCount keeps the newest MaxChanges changes, and sequences
// keep increasing past pruned ones.
func TestRetentionByCount(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		if err := s.SetRetention(user.Retention{MaxChanges: 3}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SeedDemoUsers(ctx); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := s.Update(ctx, &userv1.User{Id: "alice", DisplayName: "Alice " + string(rune('A'+i))}, []string{"display_name"}); err != nil {
				t.Fatal(err)
			}
		}
		wantChanges(t, changes(t, s, 0), change{6, "alice", updated}, change{7, "alice", updated}, change{8, "alice", updated})
		if oldest, latest, err := s.ChangeBounds(ctx); err != nil || oldest != 6 || latest != 8 {
			t.Fatalf("bounds: %d, %d, %v; want 6, 8", oldest, latest, err)
		}
	})
}

// TestRetentionByAge drops changes older than MaxAge at the next write, but
// never the change just written.
func TestRetentionByAge(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		if err := s.SetRetention(user.Retention{MaxAge: time.Nanosecond}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SeedDemoUsers(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // the seed's changes are now older than MaxAge
		if _, err := s.Update(ctx, &userv1.User{Id: "bob", DisplayName: "Robert"}, []string{"display_name"}); err != nil {
			t.Fatal(err)
		}
		wantChanges(t, changes(t, s, 0), change{4, "bob", updated})
	})
}

func TestRetentionMustBeBounded(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		s, _ := openStoreOn(t, b)
		for _, r := range []user.Retention{{}, {MaxChanges: -1}, {MaxAge: -time.Second}, {MaxChanges: -1, MaxAge: time.Hour}} {
			if err := s.SetRetention(r); err == nil {
				t.Errorf("SetRetention(%+v) accepted", r)
			}
		}
		if _, err := s.Changes(context.Background(), 0, 0); err == nil {
			t.Error("Changes with limit 0 accepted")
		}
		// The refused retentions left the default in place: nothing is pruned.
		ctx := context.Background()
		if _, err := s.SeedDemoUsers(ctx); err != nil {
			t.Fatal(err)
		}
		if got := changes(t, s, 0); len(got) != 3 {
			t.Fatalf("changes after refused retentions: %v", got)
		}
	})
}
