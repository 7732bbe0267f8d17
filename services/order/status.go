package order

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
)

// OrderState is what TrackOrders reports of an order: its owner (for the
// resource-level decision), its status and when that status was set.
type OrderState struct {
	UserID string
	Status orderv1.OrderStatus
	// Time is when the status was set; it strictly increases with every
	// SetStatus of the order.
	Time time.Time
}

// SetStatus sets the status of order id and returns its new state; a
// missing order wraps ErrNotFound. It is how a fulfilment process moves an
// order along (the sample service has no RPC for it); TrackOrders streams
// report the change.
func (s *Store) SetStatus(ctx context.Context, id string, status orderv1.OrderStatus) (OrderState, error) {
	if _, ok := orderv1.OrderStatus_name[int32(status)]; !ok || status == orderv1.OrderStatus_ORDER_STATUS_UNSPECIFIED {
		return OrderState{}, fmt.Errorf("order store: set status: %v is not a status", status)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return OrderState{}, fmt.Errorf("order store: set status: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var (
		st   OrderState
		nano int64
	)
	// The time is now, or just after the previous one if the clock says
	// otherwise, so a tracker can tell the newer of two states.
	err = tx.QueryRowContext(ctx,
		"UPDATE orders SET status = $1, status_time = "+s.greatest+"($2, status_time + 1, create_time + 1) WHERE id = $3 RETURNING user_id, status_time",
		status.String(), s.now().UnixNano(), id).Scan(&st.UserID, &nano)
	if errors.Is(err, sql.ErrNoRows) {
		return OrderState{}, fmt.Errorf("order store: order %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return OrderState{}, fmt.Errorf("order store: set status of %q: %w", id, err)
	}
	if s.listener != nil {
		// Delivered to the other replicas when the transaction commits.
		if _, err := tx.ExecContext(ctx, "SELECT pg_notify('"+statusChannel+"', $1)", s.id); err != nil {
			return OrderState{}, fmt.Errorf("order store: set status of %q: notify: %w", id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return OrderState{}, fmt.Errorf("order store: set status of %q: %w", id, err)
	}
	s.statusChanged.Notify()
	st.Status, st.Time = status, time.Unix(0, nano).UTC()
	return st, nil
}

// StatusSignal returns a channel that is closed when the next SetStatus
// commits: on this store, or with PostgreSQL on any replica sharing the
// database (and also whenever the listener reconnects, since it may have
// missed some). Take it before reading states, so a change committed after
// the read is not missed.
func (s *Store) StatusSignal() <-chan struct{} { return s.statusChanged.Wait() }

// States returns the state of each of the orders ids that exists.
func (s *Store) States(ctx context.Context, ids []string) (map[string]OrderState, error) {
	states := make(map[string]OrderState, len(ids))
	if len(ids) == 0 {
		return states, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := s.db.QueryContext(ctx,
		"SELECT id, user_id, status, CASE WHEN status_time = 0 THEN create_time ELSE status_time END FROM orders WHERE id IN ("+placeholders(len(args))+")", args...)
	if err != nil {
		return nil, fmt.Errorf("order store: states: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, status string
			st         OrderState
			nano       int64
		)
		if err := rows.Scan(&id, &st.UserID, &status, &nano); err != nil {
			return nil, fmt.Errorf("order store: states: %w", err)
		}
		v, ok := orderv1.OrderStatus_value[status]
		if !ok {
			return nil, fmt.Errorf("order store: order %s: unknown status %q", id, status)
		}
		st.Status, st.Time = orderv1.OrderStatus(v), time.Unix(0, nano).UTC()
		states[id] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("order store: states: %w", err)
	}
	return states, nil
}
