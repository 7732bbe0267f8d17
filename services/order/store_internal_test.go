package order

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
)

// databases are the backends the internal store tests run against: each
// returns the location of a new empty database.
var databases = map[string]func(t *testing.T) string{
	"sqlite":   func(t *testing.T) string { return filepath.Join(t.TempDir(), "orders.db") },
	"postgres": func(t *testing.T) string { return PG.NewDatabase(t) },
}

// eachDatabase runs test as a parallel subtest on a new store of each
// backend.
func eachDatabase(t *testing.T, test func(t *testing.T, s *Store)) {
	t.Helper()
	for name, newDB := range databases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, err := OpenStore(context.Background(), newDB(t))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			test(t, s)
		})
	}
}

// TestListBreaksTimeTiesByID stores orders that share a create time, so the
// page boundary falls inside a tie: the id must order and separate them.
func TestListBreaksTimeTiesByID(t *testing.T) {
	t.Parallel()
	eachDatabase(t, testListBreaksTimeTiesByID)
}

func testListBreaksTimeTiesByID(t *testing.T, s *Store) {
	ctx := context.Background()
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s.now = func() time.Time { return fixed }
	const n = 7
	for range n {
		if _, err := s.Create(ctx, &orderv1.Order{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "a", Quantity: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	s.now = func() time.Time { return fixed.Add(time.Second) }
	newest, err := s.Create(ctx, &orderv1.Order{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "b", Quantity: 1}}})
	if err != nil {
		t.Fatal(err)
	}

	var ids []string
	token := ""
	for {
		page, next, err := s.List(ctx, "alice", 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page {
			ids = append(ids, o.GetId())
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(ids) != n+1 || ids[0] != newest.GetId() {
		t.Fatalf("listed %v; want %d orders, %s first", ids, n+1, newest.GetId())
	}
	for i := 2; i < len(ids); i++ {
		if ids[i-1] <= ids[i] {
			t.Fatalf("tied orders not in descending id order: %v", ids)
		}
	}
}

// TestSetStatusTimesIncrease: each SetStatus gives the order a later
// status time than the last, even when the clock goes back; States reports
// the orders that exist; a missing order or a bad status changes nothing.
func TestSetStatusTimesIncrease(t *testing.T) {
	t.Parallel()
	eachDatabase(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		s.now = func() time.Time { return clock }
		o, err := s.Create(ctx, &orderv1.Order{UserId: "alice", Status: orderv1.OrderStatus_ORDER_STATUS_ACCEPTED, Items: []*orderv1.LineItem{{Sku: "a", Quantity: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		signal := s.StatusSignal()
		var last time.Time
		for i, step := range []time.Duration{time.Second, -time.Hour, 0, time.Minute} {
			clock = clock.Add(step)
			st, err := s.SetStatus(ctx, o.GetId(), orderv1.OrderStatus_ORDER_STATUS_SHIPPED)
			if err != nil {
				t.Fatal(err)
			}
			if st.UserID != "alice" || st.Status != orderv1.OrderStatus_ORDER_STATUS_SHIPPED || !st.Time.After(o.GetCreateTime().AsTime()) || !st.Time.After(last) {
				t.Fatalf("SetStatus %d: %+v after %v", i, st, last)
			}
			last = st.Time
		}
		select {
		case <-signal:
		default:
			t.Fatal("SetStatus did not close the status signal")
		}
		if _, err := s.SetStatus(ctx, "ord_missing", orderv1.OrderStatus_ORDER_STATUS_SHIPPED); !errors.Is(err, ErrNotFound) {
			t.Fatalf("SetStatus of a missing order: %v, want ErrNotFound", err)
		}
		if _, err := s.SetStatus(ctx, o.GetId(), orderv1.OrderStatus(99)); err == nil {
			t.Fatal("SetStatus accepted status 99")
		}
		states, err := s.States(ctx, []string{o.GetId(), "ord_missing"})
		if err != nil {
			t.Fatal(err)
		}
		if len(states) != 1 || states[o.GetId()] != (OrderState{UserID: "alice", Status: orderv1.OrderStatus_ORDER_STATUS_SHIPPED, Time: last}) {
			t.Fatalf("States = %+v, want only %s shipped at %v", states, o.GetId(), last)
		}
	})
}
