package user_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/services/user"
)

// backend is a database the store tests run against.
type backend struct {
	name string
	// newDB returns the location of a new empty database: a file path or
	// a postgres:// URL, for user.OpenStore.
	newDB func(t *testing.T) string
}

var (
	sqliteBackend   = backend{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "state", "users.db") }}
	postgresBackend = backend{"postgres", func(t *testing.T) string { return user.PG.NewDatabase(t) }}
)

// eachBackend runs test as a parallel subtest for each backend: the store
// keeps the same promises on both.
func eachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range []backend{sqliteBackend, postgresBackend} {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			test(t, b)
		})
	}
}

// openStore opens a store on a new SQLite database, closed when the test
// ends, and returns it with the database's path.
func openStore(t *testing.T) (*user.Store, string) {
	t.Helper()
	return openStoreOn(t, sqliteBackend)
}

// openStoreOn opens a store on a new database of b, closed when the test
// ends, and returns it with the database's location.
func openStoreOn(t *testing.T, b backend, opts ...user.StoreOption) (*user.Store, string) {
	t.Helper()
	db := b.newDB(t)
	s, err := user.OpenStore(context.Background(), db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, db
}

// equalIgnoringCreateTime compares two users but for their create_time.
func equalIgnoringCreateTime(a, b *userv1.User) bool {
	a, b = proto.CloneOf(a), proto.CloneOf(b)
	a.CreateTime, b.CreateTime = nil, nil
	return proto.Equal(a, b)
}

func TestStoreReopenKeepsDataAndSeedsOnce(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, path := openStoreOn(t, b)
		seeded, err := s.SeedDemoUsers(ctx)
		if err != nil || !seeded {
			t.Fatalf("first seed: %v, %v; want true", seeded, err)
		}
		if seeded, err := s.SeedDemoUsers(ctx); err != nil || seeded {
			t.Fatalf("second seed: %v, %v; want false", seeded, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		// Reopening runs no migration again and keeps the users.
		s, err = user.OpenStore(ctx, path)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer s.Close()
		if seeded, err := s.SeedDemoUsers(ctx); err != nil || seeded {
			t.Fatalf("seed after reopen: %v, %v; want false", seeded, err)
		}
		users, next, err := s.List(ctx, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, u := range users {
			got = append(got, u.GetId())
		}
		if !slices.Equal(got, []string{"admin", "alice", "bob"}) || next != "" {
			t.Fatalf("users %v next %q", got, next)
		}

		alice, err := s.Get(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		want := &userv1.User{Id: "alice", DisplayName: "Alice", Email: "alice@example.com", Roles: []string{"customer"}, Active: true}
		if !equalIgnoringCreateTime(want, alice) {
			t.Errorf("alice = %v, want %v", alice, want)
		}
		if alice.GetCreateTime() == nil {
			t.Error("alice has no create_time")
		}
		admin, err := s.Get(ctx, "admin")
		if err != nil || !slices.Equal(admin.GetRoles(), []string{"admin"}) || !admin.GetActive() {
			t.Fatalf("admin: %v, %v", admin, err)
		}
	})
}

func TestStoreSeedSkipsNonEmptyTable(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		if _, err := s.Create(ctx, &userv1.User{Id: "carol", DisplayName: "Carol", Email: "carol@example.com"}); err != nil {
			t.Fatal(err)
		}
		if seeded, err := s.SeedDemoUsers(ctx); err != nil || seeded {
			t.Fatalf("seed: %v, %v; want false", seeded, err)
		}
		if _, err := s.Get(ctx, "alice"); !errors.Is(err, user.ErrNotFound) {
			t.Fatalf("alice: %v, want ErrNotFound", err)
		}
	})
}

func TestStoreCreateAndGet(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		in := &userv1.User{Id: "carol", DisplayName: "Carol", Email: "carol@example.com", Roles: []string{"customer", "auditor"}}
		created, err := s.Create(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if in.GetCreateTime() != nil {
			t.Error("Create changed its argument")
		}
		if created.GetCreateTime() == nil {
			t.Fatal("no create_time")
		}
		got, err := s.Get(ctx, "carol")
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(created, got) {
			t.Fatalf("Get = %v, Create returned %v", got, created)
		}

		cases := map[string]struct {
			id      string
			wantErr error
		}{
			"duplicate id": {id: "carol", wantErr: user.ErrExists},
			"new id":       {id: "dave"},
		}
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				_, err := s.Create(ctx, &userv1.User{Id: c.id, DisplayName: "Other", Email: "other@example.com"})
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("Create(%q): %v, want %v", c.id, err, c.wantErr)
				}
			})
		}
		t.Run("duplicate leaves the first", func(t *testing.T) {
			t.Parallel()
			got, err := s.Get(ctx, "carol")
			if err != nil || got.GetDisplayName() != "Carol" {
				t.Fatalf("carol: %v, %v", got, err)
			}
		})
		if _, err := s.Get(ctx, "zed"); !errors.Is(err, user.ErrNotFound) {
			t.Fatalf("Get(zed): %v, want ErrNotFound", err)
		}
	})
}

func TestStoreListWalksEveryUserOnce(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		const n = 23
		var want []string
		for i := range n {
			id := fmt.Sprintf("user-%02d", (i*7)%n) // inserted out of order
			if _, err := s.Create(ctx, &userv1.User{Id: id, DisplayName: id, Email: id + "@example.com"}); err != nil {
				t.Fatal(err)
			}
			want = append(want, id)
		}
		slices.Sort(want)

		for _, size := range []int{1, 2, 5, 22, 23, 24, 0, 1000} {
			t.Run(fmt.Sprintf("page size %d", size), func(t *testing.T) {
				t.Parallel()
				var got []string
				token := ""
				for pages := 0; ; pages++ {
					if pages > n+1 {
						t.Fatal("pagination does not end")
					}
					users, next, err := s.List(ctx, size, token)
					if err != nil {
						t.Fatal(err)
					}
					limit := size
					if size <= 0 {
						limit = user.DefaultPageSize
					}
					if len(users) > limit {
						t.Fatalf("page of %d, asked for %d", len(users), size)
					}
					for _, u := range users {
						got = append(got, u.GetId())
					}
					if next == "" {
						break
					}
					if len(users) == 0 {
						t.Fatal("empty page with a next token")
					}
					token = next
				}
				if !slices.Equal(got, want) {
					t.Fatalf("walked %v\nwant %v", got, want)
				}
			})
		}
	})
}

func TestStoreListClampsPageSize(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		for i := range user.MaxPageSize + 1 {
			id := fmt.Sprintf("u%04d", i)
			if _, err := s.Create(ctx, &userv1.User{Id: id, DisplayName: id, Email: id + "@example.com"}); err != nil {
				t.Fatal(err)
			}
		}
		cases := map[string]struct {
			size, want int
		}{
			"zero means the default":   {size: 0, want: user.DefaultPageSize},
			"negative means default":   {size: -3, want: user.DefaultPageSize},
			"above the maximum clamps": {size: user.MaxPageSize + 100, want: user.MaxPageSize},
		}
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				users, next, err := s.List(ctx, c.size, "")
				if err != nil {
					t.Fatal(err)
				}
				if len(users) != c.want || next == "" {
					t.Fatalf("got %d users, next %q; want %d and a next token", len(users), next, c.want)
				}
			})
		}
	})
}

func TestStoreListRejectsBadTokens(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		s, _ := openStoreOn(t, b)
		if _, err := s.SeedDemoUsers(context.Background()); err != nil {
			t.Fatal(err)
		}
		cases := map[string]string{
			"not base64":           "!!!",
			"standard base64 pad":  base64.StdEncoding.EncodeToString([]byte("u1:alice")),
			"raw id without kind":  base64.RawURLEncoding.EncodeToString([]byte("alice")),
			"other kind of token":  base64.RawURLEncoding.EncodeToString([]byte("o1:123.ord_x")),
			"empty id":             base64.RawURLEncoding.EncodeToString([]byte("u1:")),
			"invalid UTF-8 in id":  base64.RawURLEncoding.EncodeToString([]byte("u1:\xff")),
			"SQL in the plaintext": "' OR 1=1 --",
		}
		for name, token := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				_, _, err := s.List(context.Background(), 10, token)
				if !errors.Is(err, user.ErrBadPageToken) {
					t.Fatalf("List(%q): %v, want ErrBadPageToken", token, err)
				}
			})
		}
	})
}

func TestStoreUpdate(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		base := &userv1.User{Id: "carol", DisplayName: "Carol", Email: "carol@example.com", Roles: []string{"customer"}, Active: true}
		change := &userv1.User{Id: "carol", DisplayName: "Caroline", Email: "caroline@example.com", Roles: []string{"admin", "customer"}, Active: false}

		cases := map[string]struct {
			id      string
			paths   []string
			want    *userv1.User // fields other than create_time
			wantErr error
		}{
			"display name only": {paths: []string{"display_name"},
				want: &userv1.User{Id: "carol", DisplayName: "Caroline", Email: "carol@example.com", Roles: []string{"customer"}, Active: true}},
			"email only": {paths: []string{"email"},
				want: &userv1.User{Id: "carol", DisplayName: "Carol", Email: "caroline@example.com", Roles: []string{"customer"}, Active: true}},
			"roles only": {paths: []string{"roles"},
				want: &userv1.User{Id: "carol", DisplayName: "Carol", Email: "carol@example.com", Roles: []string{"admin", "customer"}, Active: true}},
			"deactivate": {paths: []string{"active"},
				want: &userv1.User{Id: "carol", DisplayName: "Carol", Email: "carol@example.com", Roles: []string{"customer"}, Active: false}},
			"every field, one named twice": {paths: []string{"active", "roles", "email", "display_name", "email"},
				want: &userv1.User{Id: "carol", DisplayName: "Caroline", Email: "caroline@example.com", Roles: []string{"admin", "customer"}}},
			"unknown field":     {paths: []string{"display_name", "create_time"}, wantErr: user.ErrBadField},
			"id is not updated": {paths: []string{"id"}, wantErr: user.ErrBadField},
			"no field":          {paths: nil, wantErr: user.ErrBadField},
			"missing user":      {id: "zed", paths: []string{"email"}, wantErr: user.ErrNotFound},
		}
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				s, _ := openStoreOn(t, b)
				created, err := s.Create(ctx, base)
				if err != nil {
					t.Fatal(err)
				}
				in := proto.CloneOf(change)
				if c.id != "" {
					in.Id = c.id
				}
				got, err := s.Update(ctx, in, c.paths)
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("Update: %v, want %v", err, c.wantErr)
				}
				stored, gerr := s.Get(ctx, "carol")
				if gerr != nil {
					t.Fatal(gerr)
				}
				if c.wantErr != nil {
					if !proto.Equal(stored, created) {
						t.Fatalf("failed update changed the user: %v", stored)
					}
					return
				}
				if !equalIgnoringCreateTime(c.want, got) {
					t.Errorf("returned %v, want %v", got, c.want)
				}
				if !proto.Equal(got, stored) {
					t.Errorf("returned %v, stored %v", got, stored)
				}
				if !proto.Equal(stored.GetCreateTime(), created.GetCreateTime()) {
					t.Errorf("create_time changed")
				}
			})
		}
	})
}
