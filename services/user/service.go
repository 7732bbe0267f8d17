// Package user is the sample user service: users kept in SQLite or
// PostgreSQL (Store) and served over user.v1.UserService (Service).
//
// Choices a caller can observe:
//
//   - ListUsers: page_size 0 means 50; sizes above 500 are clamped to 500
//     (AIP-158); a negative size is invalid_argument. Over the network the
//     request's protovalidate rules refuse sizes outside 0..500 before the
//     handler runs.
//   - CreateUser stores user.active as sent: a user created without
//     "active": true is inactive and cannot place orders until updated.
//   - UpdateUser needs an update_mask naming at least one of display_name,
//     email, roles, active; it changes only those fields.
//   - Messages of invalid_argument, not_found and already_exists errors name
//     the field or the user id; any other failure is reported as internal
//     with a fixed message, and the cause is logged.
//   - Every change to a user (CreateUser; UpdateUser, DEACTIVATED when it
//     makes the user inactive) is recorded with a strictly increasing
//     sequence in the transaction that makes it, and streamed by
//     WatchUserChanges (changes.go, watch.go): the retained history after
//     the subscriber's position, then live changes, with heartbeats; a
//     reset first when the position is outside the history. Setting a
//     password records no change: credentials are not part of the user a
//     subscriber caches.
package user

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/security"
)

// Limits on the fields of a user.
const (
	// MaxDisplayNameLen is the longest display name, in characters.
	MaxDisplayNameLen = 200
	// MaxEmailLen is the longest email address, in bytes (RFC 5321's path limit).
	MaxEmailLen = 254
	// MaxRoles is the largest number of roles a user may have.
	MaxRoles = 32
)

var (
	idPattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	rolePattern = regexp.MustCompile(`^[a-z][a-z0-9._-]{0,62}$`)
)

// Service implements user.v1.UserService on a Store.
type Service struct {
	store     *Store
	log       *slog.Logger
	heartbeat time.Duration
	reads     sharedReads // watch.go
}

var _ userv1connect.UserServiceHandler = (*Service)(nil)

// NewService returns a Service serving store. logger receives the "user
// read" audit lines, the change feed's opens and closes, and the causes of
// internal errors; nil means slog.Default().
func NewService(store *Store, logger *slog.Logger, opts ...ServiceOption) *Service {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Service{store: store, log: logger, heartbeat: DefaultHeartbeatInterval}
	for _, o := range opts {
		o.applyService(s)
	}
	return s
}

// GetUser returns one user. Every successful read is logged at Info level as
// "user read" with the user's id, the SPIFFE ID of the calling workload and,
// when a token came, its subject and actor.
func (s *Service) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	if req.GetId() == "" {
		return nil, invalidArgument("id", "required")
	}
	u, err := s.store.Get(ctx, req.GetId())
	if err != nil {
		return nil, s.storeError(ctx, "GetUser", req.GetId(), err)
	}
	attrs := []slog.Attr{slog.String("user_id", u.GetId()), slog.String("caller", security.CallerID(ctx))}
	if p, ok := security.FromContext(ctx); ok && p.User != nil {
		attrs = append(attrs, slog.String("subject", p.User.Subject))
		if p.User.Actor != "" {
			attrs = append(attrs, slog.String("actor", p.User.Actor))
		}
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "user read", attrs...)
	return &userv1.GetUserResponse{User: u}, nil
}

// ListUsers returns a page of users ordered by id.
func (s *Service) ListUsers(ctx context.Context, req *userv1.ListUsersRequest) (*userv1.ListUsersResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, invalidArgument("page_size", "must not be negative")
	}
	users, next, err := s.store.List(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, s.storeError(ctx, "ListUsers", "", err)
	}
	return &userv1.ListUsersResponse{Users: users, NextPageToken: next}, nil
}

// CreateUser adds a user. user.id, user.display_name and user.email are
// required; create_time is set by the server.
func (s *Service) CreateUser(ctx context.Context, req *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
	u := req.GetUser()
	if u == nil {
		return nil, invalidArgument("user", "required")
	}
	if err := validateID(u.GetId()); err != nil {
		return nil, err
	}
	for _, f := range []string{"display_name", "email", "roles"} {
		if err := validateField(u, f); err != nil {
			return nil, err
		}
	}
	created, err := s.store.Create(ctx, u)
	if err != nil {
		return nil, s.storeError(ctx, "CreateUser", u.GetId(), err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "user created",
		slog.String("user_id", created.GetId()),
		slog.String("caller", security.CallerID(ctx)),
	)
	return &userv1.CreateUserResponse{User: created}, nil
}

// UpdateUser changes the fields of user.id named in update_mask.
func (s *Service) UpdateUser(ctx context.Context, req *userv1.UpdateUserRequest) (*userv1.UpdateUserResponse, error) {
	u := req.GetUser()
	if u == nil {
		return nil, invalidArgument("user", "required")
	}
	if u.GetId() == "" {
		return nil, invalidArgument("user.id", "required")
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, invalidArgument("update_mask", "must name at least one of "+strings.Join(UpdatableFields(), ", "))
	}
	for _, p := range paths {
		if err := validateField(u, p); err != nil {
			return nil, err
		}
	}
	updated, err := s.store.Update(ctx, u, paths)
	if err != nil {
		return nil, s.storeError(ctx, "UpdateUser", u.GetId(), err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "user updated",
		slog.String("user_id", updated.GetId()),
		slog.Any("fields", paths),
		slog.String("caller", security.CallerID(ctx)),
	)
	return &userv1.UpdateUserResponse{User: updated}, nil
}

func invalidArgument(field, problem string) *connect.Error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, problem))
}

func validateID(id string) error {
	switch {
	case id == "":
		return invalidArgument("user.id", "required")
	case !idPattern.MatchString(id):
		return invalidArgument("user.id", "must match "+idPattern.String())
	}
	return nil
}

// validateField checks the value in u of the field path names; a path that
// names no updatable field is invalid_argument.
func validateField(u *userv1.User, path string) error {
	switch path {
	case "display_name":
		name := u.GetDisplayName()
		switch {
		case strings.TrimSpace(name) == "":
			return invalidArgument("user.display_name", "required")
		case !utf8.ValidString(name) || utf8.RuneCountInString(name) > MaxDisplayNameLen:
			return invalidArgument("user.display_name", fmt.Sprintf("must be valid UTF-8 of at most %d characters", MaxDisplayNameLen))
		}
	case "email":
		email := u.GetEmail()
		if email == "" {
			return invalidArgument("user.email", "required")
		}
		// A bare address only: no display name, no angle brackets.
		if a, err := mail.ParseAddress(email); err != nil || a.Address != email || len(email) > MaxEmailLen {
			return invalidArgument("user.email", "must be an email address such as alice@example.com")
		}
	case "roles":
		if len(u.GetRoles()) > MaxRoles {
			return invalidArgument("user.roles", fmt.Sprintf("at most %d roles", MaxRoles))
		}
		for i, r := range u.GetRoles() {
			if !rolePattern.MatchString(r) {
				return invalidArgument(fmt.Sprintf("user.roles[%d]", i), "must match "+rolePattern.String())
			}
		}
	case "active":
	default:
		return invalidArgument("update_mask", fmt.Sprintf("unknown field %q; updatable fields are %s", path, strings.Join(UpdatableFields(), ", ")))
	}
	return nil
}

// storeError turns a Store error into the error the client sees. Only
// errors whose meaning the client may know keep their code and a message
// naming the user (id); anything else is logged and reported as internal
// with a fixed message, so no SQL or file detail reaches a client.
func (s *Service) storeError(ctx context.Context, method, id string, err error) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("user %q not found", id))
	case errors.Is(err, ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("user %q already exists", id))
	case errors.Is(err, ErrBadPageToken):
		return invalidArgument("page_token", "not a token this service returned")
	case errors.Is(err, ErrBadField):
		return invalidArgument("update_mask", "must name only "+strings.Join(UpdatableFields(), ", "))
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The caller ran out of time or gave up; the store only noticed.
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	case ctx.Err() != nil:
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	}
	s.log.LogAttrs(ctx, slog.LevelError, "user store failed",
		slog.String("method", method),
		slog.String("user_id", id),
		slog.String("caller", security.CallerID(ctx)),
		slog.String("error", err.Error()),
	)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}
