package order

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
)

// TestListBreaksTimeTiesByID stores orders that share a create time, so the
// page boundary falls inside a tie: the id must order and separate them.
func TestListBreaksTimeTiesByID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := OpenStore(ctx, filepath.Join(t.TempDir(), "orders.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
