package order

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/palisade-rpc/palisade/authz"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security"
)

// Limits of the streaming methods.
const (
	// MaxImportOrders is the largest number of orders one ImportOrders call
	// takes.
	MaxImportOrders = 1000
	// MaxTrackedOrders is the largest number of orders one TrackOrders
	// stream follows.
	MaxTrackedOrders = 100
)

// ImportOrders stores every order the client sends, or none. Each message
// is authorized as it arrives (the server is built with
// authz.WithPerMessage for this procedure: a customer imports orders for
// themselves only) and validated like a CreateOrder request; the orders are
// kept in memory until the client closes its side. Then each distinct user
// is checked with the user service (exists, active), and only if every
// message was allowed and valid and every user checks out are the orders
// stored, in one transaction. Any refusal fails the call with its code and
// stores nothing.
//
// While the client streams, each order is held in its wire form (see
// heldOrders): half what the decoded messages take. The stream itself is
// bounded by the server's caps (rpc.WithMaxStreamBytes,
// rpc.WithMaxStreamMessages) and by MaxImportOrders; the server decodes
// requests without their unknown fields, so none is held or echoed.
func (s *Service) ImportOrders(ctx context.Context, stream *connect.ClientStream[orderv1.ImportOrdersRequest]) (*orderv1.ImportOrdersResponse, error) {
	var held heldOrders
	for stream.Receive() {
		req := stream.Msg()
		if held.len() == MaxImportOrders {
			return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("at most %d orders per import", MaxImportOrders))
		}
		if err := validateCreate(&orderv1.CreateOrderRequest{UserId: req.GetUserId(), Items: req.GetItems()}); err != nil {
			var ce *connect.Error
			if errors.As(err, &ce) {
				err = errors.New(ce.Message())
			}
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("order %d: %w", held.len(), err))
		}
		if err := held.add(&orderv1.Order{UserId: req.GetUserId(), Items: req.GetItems(), Status: orderv1.OrderStatus_ORDER_STATUS_ACCEPTED}); err != nil {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("order %d: %w", held.len(), err))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err // a refused message, or the client went away
	}
	if held.len() == 0 {
		return nil, invalidArgument("orders", "at least one order is required")
	}
	orders, err := held.orders()
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	names := map[string]string{}
	for _, o := range orders {
		if _, ok := names[o.GetUserId()]; !ok {
			u, err := s.lookupUser(ctx, o.GetUserId())
			if err != nil {
				return nil, err
			}
			names[o.GetUserId()] = u.GetDisplayName()
		}
		o.UserDisplayName = names[o.GetUserId()]
	}
	stored, err := s.store.CreateAll(ctx, orders)
	if err != nil {
		return nil, s.storeError(ctx, "ImportOrders", "", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "orders imported",
		slog.Int("orders", len(stored)), slog.Int("users", len(names)), slog.String("caller", security.CallerID(ctx)))
	return &orderv1.ImportOrdersResponse{Orders: stored}, nil
}

// heldOrders are the orders of an import while the client is still
// sending, each in its wire form. A decoded order takes about twice its
// wire size (a struct, a string header and a slice slot per line item): the
// largest valid import (MaxImportOrders orders of 100 items with 64-byte
// skus, 7.1 MB on the wire) held 14.6–15.8 MiB of heap decoded, and holds
// 7.6–9.3 MiB in wire form. The client chooses how long a stream stays
// open, so that is the memory worth halving; the orders are decoded again
// only once the client is done, for as long as it takes to store them.
type heldOrders struct{ wire [][]byte }

func (h *heldOrders) len() int { return len(h.wire) }

func (h *heldOrders) add(o *orderv1.Order) error {
	b, err := proto.Marshal(o)
	if err != nil {
		return fmt.Errorf("hold order: %w", err)
	}
	h.wire = append(h.wire, b)
	return nil
}

// orders decodes the held orders, releasing each wire form as it goes.
func (h *heldOrders) orders() ([]*orderv1.Order, error) {
	out := make([]*orderv1.Order, len(h.wire))
	for i, b := range h.wire {
		out[i] = new(orderv1.Order)
		if err := proto.Unmarshal(b, out[i]); err != nil {
			return nil, fmt.Errorf("decode held order %d: %w", i, err)
		}
		h.wire[i] = nil
	}
	h.wire = nil
	return out, nil
}

// TrackOrders answers every order id the client sends with the order's
// status, and sends the status again each time it changes, until the
// client goes away (closing its side only means it has no more ids to
// send). Each id is authorized with the order's owner, as GetOrder is; an
// id the caller may not see, an unknown id, or more than MaxTrackedOrders
// ids end the whole stream with permission_denied, not_found or
// resource_exhausted — the client learns nothing about the orders it sent
// after that. An id sent twice is answered with the status already known.
func (s *Service) TrackOrders(ctx context.Context, stream *connect.BidiStream[orderv1.TrackOrdersRequest, orderv1.TrackOrdersResponse]) error {
	t := &tracker{s: s, stream: stream, tracked: map[string]OrderState{}, nudge: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	pushed := make(chan error, 1)
	wg.Go(func() { pushed <- t.push(ctx) })
	defer wg.Wait()
	defer cancel()
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if err := t.track(ctx, req.GetOrderId()); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		return rpc.StreamEnded(ctx)
	case err := <-pushed:
		return err
	}
}

// tracker is one TrackOrders stream: the orders it follows, with the state
// last sent for each. Its two goroutines (the handler's, receiving ids, and
// push) send under mu.
type tracker struct {
	s      *Service
	stream *connect.BidiStream[orderv1.TrackOrdersRequest, orderv1.TrackOrdersResponse]
	nudge  chan struct{} // asks push to look again

	mu      sync.Mutex
	tracked map[string]OrderState
}

func (t *tracker) send(id string, st OrderState) error {
	return t.stream.Send(&orderv1.TrackOrdersResponse{OrderId: id, Status: st.Status, Time: timestamppb.New(st.Time)})
}

// track starts following order id, if the caller may see it, and sends its
// status.
func (t *tracker) track(ctx context.Context, id string) error {
	if id == "" {
		return invalidArgument("order_id", "required")
	}
	t.mu.Lock()
	if st, ok := t.tracked[id]; ok {
		defer t.mu.Unlock()
		return t.send(id, st)
	}
	n := len(t.tracked)
	t.mu.Unlock()
	if n >= MaxTrackedOrders {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("at most %d orders per stream", MaxTrackedOrders))
	}
	states, err := t.s.store.States(ctx, []string{id})
	if err != nil {
		return t.s.storeError(ctx, "TrackOrders", id, err)
	}
	st, ok := states[id]
	if !ok {
		return t.s.storeError(ctx, "TrackOrders", id, ErrNotFound)
	}
	if err := authz.AuthorizeResource(ctx, authz.Resource{Kind: "order", ID: id, Owner: st.UserID}); err != nil {
		return err
	}
	t.mu.Lock()
	t.tracked[id] = st
	err = t.send(id, st)
	t.mu.Unlock()
	// The state was read before it was recorded: push looks again, so a
	// change committed in between is not missed.
	select {
	case t.nudge <- struct{}{}:
	default:
	}
	return err
}

// push sends the states of tracked orders that changed, whenever a status
// is set or track asks, until ctx is done or a send fails. A state is sent
// only if it is newer than the one last sent.
func (t *tracker) push(ctx context.Context) error {
	for {
		signal := t.s.store.StatusSignal()
		t.mu.Lock()
		ids := make([]string, 0, len(t.tracked))
		for id := range t.tracked {
			ids = append(ids, id)
		}
		t.mu.Unlock()
		states, err := t.s.store.States(ctx, ids)
		if err != nil && ctx.Err() == nil {
			t.s.log.LogAttrs(ctx, slog.LevelError, "TrackOrders: reading order states failed; waiting for the next change",
				slog.String("error", err.Error()))
		}
		if err := t.sendNewer(states); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-signal:
		case <-t.nudge:
		}
	}
}

func (t *tracker) sendNewer(states map[string]OrderState) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, st := range states {
		if st.Time.After(t.tracked[id].Time) {
			t.tracked[id] = st
			if err := t.send(id, st); err != nil {
				return err
			}
		}
	}
	return nil
}
