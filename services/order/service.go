// Package order is the sample order service: orders kept in SQLite (Store)
// and served over order.v1.OrderService (Service). Before it accepts an
// order, the service asks the user service whether the user exists and is
// active, and it stores nothing unless the answer is yes.
//
// Choices a caller can observe:
//
//   - CreateOrder takes 1 to MaxItems items, each with a sku and a quantity
//     from 1 to MaxQuantity; anything else is invalid_argument naming the
//     field, and the user service is not called.
//   - The user lookup runs under the caller's deadline, less a reserve for
//     answering (a tenth of the time left, between 50ms and 500ms), and never
//     longer than UserLookupTimeout. A user service that is down, slow or
//     unreachable yields unavailable before the caller's deadline, rather than
//     the caller's own deadline_exceeded.
//   - ListOrders: page_size 0 means 50; sizes above 500 are clamped to 500
//     (AIP-158); a negative size is invalid_argument. Over the network the
//     request's protovalidate rules refuse sizes outside 0..500 before the
//     handler runs.
//   - Users are looked up in a bounded in-memory cache first (UserCache,
//     10,000 users, least recently used evicted), kept fresh by the user
//     service's change feed, to which every replica subscribes as the order
//     workload. While the feed is down or catching up, the cache is
//     bypassed: every lookup asks the user service. A user changed at time
//     T is never served as before T later than T + 3s (the cache's
//     Liveness) plus the feed's network delay, even if the feed fails
//     silently; in normal operation the change is applied within
//     milliseconds of its commit. A cache hit does not call the user
//     service, so it does not appear in that service's "user read" log.
//   - ImportOrders (client stream) stores all of its orders or none; every
//     message is authorized (authz.WithPerMessage) and validated.
//   - TrackOrders (bidi stream) answers each order id with its status and
//     again on every change (Store.SetStatus); an id the caller may not see
//     ends the stream with permission_denied.
package order

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
)

// Limits on a CreateOrder request.
const (
	// MaxItems is the largest number of line items in one order.
	MaxItems = 100
	// MaxQuantity is the largest quantity of one line item.
	MaxQuantity = 1000
	// MaxSKULen is the longest sku, in bytes.
	MaxSKULen = 64
)

// UserLookupTimeout bounds the call to the user service when the caller's
// deadline is further away (or absent).
const UserLookupTimeout = 5 * time.Second

// Bounds of the time CreateOrder keeps back from the caller's deadline to
// answer after the user lookup.
const (
	minReplyReserve = 50 * time.Millisecond
	maxReplyReserve = 500 * time.Millisecond
)

// UserDirectory is what the service needs from the user service. The
// generated userv1connect.UserServiceClient satisfies it.
type UserDirectory interface {
	GetUser(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error)
}

// Service implements order.v1.OrderService on a Store, validating users with
// a UserDirectory.
type Service struct {
	store *Store
	users UserDirectory
	log   *slog.Logger
}

var _ orderv1connect.OrderServiceHandler = (*Service)(nil)

// NewService returns a Service storing orders in store and validating users
// with users. logger receives accepted orders and the causes of internal
// errors; nil means slog.Default().
func NewService(store *Store, users UserDirectory, logger *slog.Logger) *Service {
	if logger == nil {
		logger = slog.Default()
	}
	return &Service{store: store, users: users, log: logger}
}

// CreateOrder validates the request, checks with the user service that the
// user exists and is active, and only then stores the order as ACCEPTED.
func (s *Service) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	if err := validateCreate(req); err != nil {
		return nil, err
	}
	u, err := s.lookupUser(ctx, req.GetUserId())
	if err != nil {
		return nil, err
	}
	o, err := s.store.Create(ctx, &orderv1.Order{
		UserId:          req.GetUserId(),
		Items:           req.GetItems(),
		Status:          orderv1.OrderStatus_ORDER_STATUS_ACCEPTED,
		UserDisplayName: u.GetDisplayName(),
	})
	if err != nil {
		return nil, s.storeError(ctx, "CreateOrder", "", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "order accepted",
		slog.String("order_id", o.GetId()),
		slog.String("user_id", o.GetUserId()),
		slog.Int("items", len(o.GetItems())),
		slog.String("caller", security.CallerID(ctx)),
	)
	return &orderv1.CreateOrderResponse{Order: o}, nil
}

func validateCreate(req *orderv1.CreateOrderRequest) error {
	if req.GetUserId() == "" {
		return invalidArgument("user_id", "required")
	}
	items := req.GetItems()
	switch {
	case len(items) == 0:
		return invalidArgument("items", "at least one item is required")
	case len(items) > MaxItems:
		return invalidArgument("items", fmt.Sprintf("at most %d items", MaxItems))
	}
	for i, item := range items {
		switch {
		case item.GetSku() == "":
			return invalidArgument(fmt.Sprintf("items[%d].sku", i), "required")
		case len(item.GetSku()) > MaxSKULen:
			return invalidArgument(fmt.Sprintf("items[%d].sku", i), fmt.Sprintf("at most %d bytes", MaxSKULen))
		case item.GetQuantity() < 1 || item.GetQuantity() > MaxQuantity:
			return invalidArgument(fmt.Sprintf("items[%d].quantity", i), fmt.Sprintf("must be between 1 and %d", MaxQuantity))
		}
	}
	return nil
}

// lookupUser asks the user service for userID and returns the user if it
// exists and is active. Any other outcome is returned as the error the
// client sees.
func (s *Service) lookupUser(ctx context.Context, userID string) (*userv1.User, error) {
	lookupCtx, cancel := lookupContext(ctx)
	defer cancel()
	res, err := s.users.GetUser(lookupCtx, &userv1.GetUserRequest{Id: userID})
	if err != nil {
		return nil, s.upstreamError(ctx, lookupCtx, userID, err)
	}
	u := res.GetUser()
	if u.GetId() != userID {
		s.log.LogAttrs(ctx, slog.LevelError, "user service answered for another user",
			slog.String("user_id", userID), slog.String("answered", u.GetId()))
		return nil, connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	if !u.GetActive() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("user %q is not active", userID))
	}
	return u, nil
}

// lookupContext derives the context of the user lookup from the incoming
// one: the caller's deadline less a reserve for answering, capped at
// UserLookupTimeout.
func lookupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(UserLookupTimeout)
	if d, ok := ctx.Deadline(); ok {
		reserve := min(max(time.Until(d)/10, minReplyReserve), maxReplyReserve)
		if d.Add(-reserve).Before(deadline) {
			deadline = d.Add(-reserve)
		}
	}
	return context.WithDeadline(ctx, deadline)
}

// upstreamError maps a failed GetUser call to the error the client sees.
// The client learns whether the user is missing, or that the user service
// could not be asked; the upstream detail only goes to the log.
func (s *Service) upstreamError(ctx, lookupCtx context.Context, userID string, err error) error {
	code := connect.CodeOf(err)
	switch {
	case code == connect.CodeNotFound:
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("user %q does not exist", userID))
	case code == connect.CodeUnavailable, code == connect.CodeDeadlineExceeded, code == connect.CodeCanceled,
		lookupCtx.Err() != nil:
		s.log.LogAttrs(ctx, slog.LevelWarn, "user service unavailable",
			slog.String("user_id", userID), slog.String("error", err.Error()), slog.Bool("caller_gone", ctx.Err() != nil))
		return connect.NewError(connect.CodeUnavailable, errors.New("user service unavailable"))
	case code == connect.CodePermissionDenied, code == connect.CodeUnauthenticated:
		s.log.LogAttrs(ctx, slog.LevelError, "user service refused the order service",
			slog.String("user_id", userID), slog.String("error", err.Error()))
		return connect.NewError(connect.CodePermissionDenied, errors.New("the user service refused to validate the user"))
	}
	s.log.LogAttrs(ctx, slog.LevelError, "user lookup failed",
		slog.String("user_id", userID), slog.String("code", code.String()), slog.String("error", err.Error()))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// GetOrder returns one order.
func (s *Service) GetOrder(ctx context.Context, req *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	if req.GetId() == "" {
		return nil, invalidArgument("id", "required")
	}
	o, err := s.store.Get(ctx, req.GetId())
	if err != nil {
		return nil, s.storeError(ctx, "GetOrder", req.GetId(), err)
	}
	// Whether the caller may read this order depends on its owner, which the
	// call-level decision could not see: ask again with the resource.
	if err := authz.AuthorizeResource(ctx, authz.Resource{Kind: "order", ID: o.GetId(), Owner: o.GetUserId()}); err != nil {
		return nil, err
	}
	return &orderv1.GetOrderResponse{Order: o}, nil
}

// ListOrders returns a page of one user's orders, newest first.
func (s *Service) ListOrders(ctx context.Context, req *orderv1.ListOrdersRequest) (*orderv1.ListOrdersResponse, error) {
	if req.GetUserId() == "" {
		return nil, invalidArgument("user_id", "required")
	}
	if req.GetPageSize() < 0 {
		return nil, invalidArgument("page_size", "must not be negative")
	}
	orders, next, err := s.store.List(ctx, req.GetUserId(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, s.storeError(ctx, "ListOrders", "", err)
	}
	return &orderv1.ListOrdersResponse{Orders: orders, NextPageToken: next}, nil
}

func invalidArgument(field, problem string) *connect.Error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, problem))
}

// storeError turns a Store error into the error the client sees: not_found
// and invalid_argument name the order or the field; anything else is logged
// and reported as internal with a fixed message.
func (s *Service) storeError(ctx context.Context, method, orderID string, err error) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("order %q not found", orderID))
	case errors.Is(err, ErrBadPageToken):
		return invalidArgument("page_token", "not a token this service returned")
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	case ctx.Err() != nil:
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	}
	s.log.LogAttrs(ctx, slog.LevelError, "order store failed",
		slog.String("method", method),
		slog.String("caller", security.CallerID(ctx)),
		slog.String("error", err.Error()),
	)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}
