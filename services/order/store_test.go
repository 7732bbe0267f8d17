package order_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/services/order"
)

// backend is a database the store tests run against.
type backend struct {
	name string
	// newDB returns the location of a new empty database: a file path or
	// a postgres:// URL, for order.OpenStore.
	newDB func(t *testing.T) string
}

var (
	sqliteBackend   = backend{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "state", "orders.db") }}
	postgresBackend = backend{"postgres", func(t *testing.T) string { return order.PG.NewDatabase(t) }}
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
func openStore(t *testing.T) (*order.Store, string) {
	t.Helper()
	return openStoreOn(t, sqliteBackend)
}

// openStoreOn opens a store on a new database of b, closed when the test
// ends, and returns it with the database's location.
func openStoreOn(t *testing.T, b backend) (*order.Store, string) {
	t.Helper()
	db := b.newDB(t)
	s, err := order.OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, db
}

func newOrder(userID string, items ...*orderv1.LineItem) *orderv1.Order {
	if len(items) == 0 {
		items = []*orderv1.LineItem{{Sku: "book-1", Quantity: 2}}
	}
	return &orderv1.Order{UserId: userID, Items: items, Status: orderv1.OrderStatus_ORDER_STATUS_ACCEPTED, UserDisplayName: "Alice"}
}

func count(t *testing.T, s *order.Store) int {
	t.Helper()
	n, err := s.Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var orderIDPattern = regexp.MustCompile(`^ord_[a-z2-7]{26}$`)

func TestStoreCreateGetAndReopen(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, path := openStoreOn(t, b)
		in := newOrder("alice",
			&orderv1.LineItem{Sku: "book-2", Quantity: 1},
			&orderv1.LineItem{Sku: "book-1", Quantity: 3},
			&orderv1.LineItem{Sku: "pen", Quantity: 1000},
		)
		created, err := s.Create(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if in.GetId() != "" || in.GetCreateTime() != nil {
			t.Error("Create changed its argument")
		}
		if !orderIDPattern.MatchString(created.GetId()) || created.GetCreateTime() == nil {
			t.Fatalf("created %v", created)
		}
		got, err := s.Get(ctx, created.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, created) {
			t.Fatalf("Get = %v\nwant %v", got, created)
		}
		if _, err := s.Get(ctx, "ord_missing"); !errors.Is(err, order.ErrNotFound) {
			t.Fatalf("Get(missing): %v, want ErrNotFound", err)
		}
		other, err := s.Create(ctx, newOrder("alice"))
		if err != nil {
			t.Fatal(err)
		}
		if other.GetId() == created.GetId() {
			t.Fatal("two orders got the same id")
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		// Reopening applies no migration again and keeps the orders.
		s, err = order.OpenStore(ctx, path)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer s.Close()
		if n := count(t, s); n != 2 {
			t.Fatalf("Count after reopen = %d, want 2", n)
		}
		if got, err := s.Get(ctx, created.GetId()); err != nil || !proto.Equal(got, created) {
			t.Fatalf("after reopen: %v, %v", got, err)
		}
	})
}

func TestStoreCreateRefusesIncompleteOrders(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		s, _ := openStoreOn(t, b)
		cases := map[string]*orderv1.Order{
			"no user":       {Items: []*orderv1.LineItem{{Sku: "a", Quantity: 1}}},
			"no items":      {UserId: "alice"},
			"zero quantity": newOrder("alice", &orderv1.LineItem{Sku: "a", Quantity: 1}, &orderv1.LineItem{Sku: "b", Quantity: 0}),
		}
		for name, o := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				if _, err := s.Create(context.Background(), o); err == nil {
					t.Fatal("Create succeeded")
				}
			})
		}
		t.Cleanup(func() {
			// The failing item insert rolled the whole order back.
			if n := count(t, s); n != 0 {
				t.Errorf("Count = %d after failed creates, want 0", n)
			}
		})
	})
}

func TestStoreListWalksNewestFirst(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s, _ := openStoreOn(t, b)
		const n = 17
		for i := range n {
			if _, err := s.Create(ctx, newOrder("alice", &orderv1.LineItem{Sku: fmt.Sprintf("sku-%d", i), Quantity: 1})); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Create(ctx, newOrder("bob")); err != nil { // interleaved, never listed for alice
				t.Fatal(err)
			}
		}
		for _, size := range []int{1, 3, 16, 17, 18, 0} {
			t.Run(fmt.Sprintf("page size %d", size), func(t *testing.T) {
				t.Parallel()
				seen := map[string]bool{}
				var prev *orderv1.Order
				token := ""
				for pages := 0; ; pages++ {
					if pages > n+1 {
						t.Fatal("pagination does not end")
					}
					orders, next, err := s.List(ctx, "alice", size, token)
					if err != nil {
						t.Fatal(err)
					}
					for _, o := range orders {
						if o.GetUserId() != "alice" || len(o.GetItems()) != 1 {
							t.Fatalf("listed %v", o)
						}
						if seen[o.GetId()] {
							t.Fatalf("%s listed twice", o.GetId())
						}
						seen[o.GetId()] = true
						if prev != nil && !newerOrSame(prev, o) {
							t.Fatalf("%v listed before %v", prev, o)
						}
						prev = o
					}
					if next == "" {
						break
					}
					token = next
				}
				if len(seen) != n {
					t.Fatalf("walked %d orders, want %d", len(seen), n)
				}
			})
		}
		t.Run("user without orders", func(t *testing.T) {
			t.Parallel()
			orders, next, err := s.List(ctx, "carol", 10, "")
			if err != nil || len(orders) != 0 || next != "" {
				t.Fatalf("%v %q %v", orders, next, err)
			}
		})
	})
}

// newerOrSame reports whether a sorts before b in List's order: create time
// descending, then id descending.
func newerOrSame(a, b *orderv1.Order) bool {
	ta, tb := a.GetCreateTime().AsTime(), b.GetCreateTime().AsTime()
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	return a.GetId() > b.GetId()
}

func TestStoreListRejectsBadTokens(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		s, _ := openStoreOn(t, b)
		enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
		cases := map[string]string{
			"not base64":         "***",
			"user token":         enc("u1:alice"),
			"no id":              enc("o1:123"),
			"id of another kind": enc("o1:123:usr_x"),
			"bad time":           enc("o1:12x:ord_abc"),
			"negative time":      enc("o1:-5:ord_abc"),
			"plain text":         "o1:123:ord_abc",
		}
		for name, token := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				if _, _, err := s.List(context.Background(), "alice", 10, token); !errors.Is(err, order.ErrBadPageToken) {
					t.Fatalf("List(%q): %v, want ErrBadPageToken", token, err)
				}
			})
		}
		if _, _, err := s.List(context.Background(), "", 10, ""); err == nil {
			t.Fatal("List without a user id succeeded")
		}
	})
}

// TestStatusChangesWakeEveryReplica: two replicas share a PostgreSQL
// database; a status set through A closes B's status signal, so B's
// TrackOrders streams see it.
func TestStatusChangesWakeEveryReplica(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := order.PG.NewDatabase(t)
	var replicas [2]*order.Store
	for i := range replicas {
		s, err := order.OpenStore(ctx, url, order.WithStoreLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		replicas[i] = s
	}
	a, b := replicas[0], replicas[1]
	o, err := a.Create(ctx, newOrder("alice"))
	if err != nil {
		t.Fatal(err)
	}
	signal := b.StatusSignal()
	if _, err := a.SetStatus(ctx, o.GetId(), orderv1.OrderStatus_ORDER_STATUS_SHIPPED); err != nil {
		t.Fatal(err)
	}
	select {
	case <-signal:
	case <-time.After(30 * time.Second):
		t.Fatal("B's status signal stayed open after A set a status")
	}
	states, err := b.States(ctx, []string{o.GetId()})
	if err != nil || states[o.GetId()].Status != orderv1.OrderStatus_ORDER_STATUS_SHIPPED {
		t.Fatalf("B reads %+v, %v; want the order shipped", states, err)
	}
}
