package user

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/services/internal/broadcast"
	"github.com/palisade-rpc/palisade/services/internal/pgdb"
	"github.com/palisade-rpc/palisade/services/internal/sqlitedb"
)

// Errors the Store's methods wrap; test for them with errors.Is.
var (
	// ErrNotFound: no user has the id.
	ErrNotFound = errors.New("user not found")
	// ErrExists: a user with the id already exists.
	ErrExists = errors.New("user already exists")
	// ErrBadPageToken: the page token was not one List returned.
	ErrBadPageToken = errors.New("malformed page token")
	// ErrBadField: an update path does not name an updatable field.
	ErrBadField = errors.New("unknown or read-only field")
)

// Page sizes of List.
const (
	// DefaultPageSize is the page size List uses when asked for 0 or fewer users.
	DefaultPageSize = 50
	// MaxPageSize is the largest page List returns; larger requests are clamped to it.
	MaxPageSize = 500
)

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// Store keeps users, and the history of their changes (see changes.go), in
// a database: a SQLite file, the embedded default, or PostgreSQL, which
// several replicas of the service can share. It is safe for concurrent use.
//
// Both backends run the same SQL but for the few statements of dialect.
type Store struct {
	db  *sql.DB
	sql dialect
	now func() time.Time

	// changed is notified when a change commits: by this store after its
	// writes, and by listener when another replica's write commits.
	changed  broadcast.Signal
	listener *pgdb.Listener // nil with SQLite
	// id tells this store's notifications from other replicas' (PostgreSQL).
	id string

	mu        sync.Mutex
	retention Retention
}

// dialect is what differs between the backends' SQL.
type dialect struct {
	// insertChange records a change ($1 user id, $2 kind, $3 time) and
	// returns its sequence. Changes must become visible in sequence order
	// (see changes.go).
	insertChange string
	// notifyChange, when set, tells the other replicas that change $1
	// committed. It runs in the writing transaction, so it is delivered when
	// the transaction commits, and not at all if it rolls back.
	notifyChange string
	// lockUsers, when set, runs first in SeedDemoUsers, so that replicas
	// starting at once do not both find the table empty.
	lockUsers string
}

// SQLite has one writer at a time (transactions begin IMMEDIATE), so
// AUTOINCREMENT's sequences commit in order.
var sqliteDialect = dialect{
	insertChange: "INSERT INTO user_changes (user_id, kind, time) VALUES ($1, $2, $3) RETURNING sequence",
}

// PostgreSQL takes the next sequence by updating the one row of
// user_change_sequence, which stays locked until the transaction ends: see
// migrations/postgres/0003_user_changes.sql.
var postgresDialect = dialect{
	insertChange: `WITH next AS (UPDATE user_change_sequence SET last = last + 1 RETURNING last)
INSERT INTO user_changes (sequence, user_id, kind, time) VALUES ((SELECT last FROM next), $1, $2, $3)
RETURNING sequence`,
	notifyChange: "SELECT pg_notify('" + changeChannel + "', $1)",
	lockUsers:    "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE",
}

// changeChannel is the PostgreSQL notification channel of user changes.
// The payload is the change's sequence and the id of the store that wrote
// it, separated by a space.
const changeChannel = "user_changes"

// StoreOption configures OpenStore.
type StoreOption interface {
	applyStore(*storeConfig)
}

type storeConfig struct {
	logger *slog.Logger
}

type storeOptionFunc func(*storeConfig)

func (f storeOptionFunc) applyStore(c *storeConfig) { f(c) }

// WithStoreLogger sets the logger of a PostgreSQL store's change listener,
// which logs losing and regaining its connection (default slog.Default()).
func WithStoreLogger(l *slog.Logger) StoreOption {
	return storeOptionFunc(func(c *storeConfig) {
		if l != nil {
			c.logger = l
		}
	})
}

// OpenStore opens the user database db and brings its schema up to date
// (the files in migrations/sqlite or migrations/postgres).
//
// db is a SQLite file path, the file and its directory created when
// missing (see package sqlitedb), or a postgres:// URL (see package pgdb).
// A PostgreSQL store also listens for the changes other replicas sharing
// the database commit, and closes ChangeSignal on each. Errors never hold
// the URL, which may hold a password.
func OpenStore(ctx context.Context, db string, opts ...StoreOption) (*Store, error) {
	cfg := storeConfig{logger: slog.Default()}
	for _, o := range opts {
		o.applyStore(&cfg)
	}
	s := &Store{now: time.Now, retention: DefaultRetention()}
	if !pgdb.IsURL(db) {
		migrations, err := fs.Sub(migrationFiles, "migrations/sqlite")
		if err != nil {
			return nil, fmt.Errorf("user store: %w", err)
		}
		if s.db, err = sqlitedb.Open(ctx, db, migrations); err != nil {
			return nil, fmt.Errorf("user store: %w", err)
		}
		s.sql = sqliteDialect
		return s, nil
	}
	migrations, err := fs.Sub(migrationFiles, "migrations/postgres")
	if err != nil {
		return nil, fmt.Errorf("user store: %w", err)
	}
	if s.db, err = pgdb.Open(ctx, db, "user", migrations); err != nil {
		return nil, fmt.Errorf("user store: %w", err)
	}
	s.sql = postgresDialect
	var id [8]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	s.id = hex.EncodeToString(id[:])
	if s.listener, err = pgdb.Listen(ctx, db, changeChannel, s.notified, cfg.logger); err != nil {
		_ = s.db.Close()
		return nil, fmt.Errorf("user store: %w", err)
	}
	return s, nil
}

// notified is called by the listener with the payload of a notification,
// or "" when it may have missed some.
func (s *Store) notified(payload string) {
	if _, from, _ := strings.Cut(payload, " "); from == s.id {
		return // this store's own change: it closed the signal when it committed
	}
	s.changed.Notify()
}

// Close stops listening for changes and closes the database.
func (s *Store) Close() error {
	if s.listener != nil {
		_ = s.listener.Close() // never fails
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("user store: close: %w", err)
	}
	return nil
}

// demoUsers are the users of DESIGN.md's demo.
func demoUsers() []*userv1.User {
	return []*userv1.User{
		{Id: "alice", DisplayName: "Alice", Email: "alice@example.com", Roles: []string{"customer"}, Active: true},
		{Id: "bob", DisplayName: "Bob", Email: "bob@example.com", Roles: []string{"customer"}, Active: true},
		{Id: "admin", DisplayName: "Admin", Email: "admin@example.com", Roles: []string{"admin"}, Active: true},
	}
}

// SeedDemoUsers adds the demo users — alice and bob (role customer) and
// admin (role admin), all active — when the users table is empty, and
// reports whether it added them. A database that has any user is left alone,
// so seeding on every start is safe, also when several replicas sharing a
// PostgreSQL database start at once (one of them seeds).
func (s *Store) SeedDemoUsers(ctx context.Context) (bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("user store: seed: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if s.sql.lockUsers != "" {
		if _, err := tx.ExecContext(ctx, s.sql.lockUsers); err != nil {
			return false, fmt.Errorf("user store: seed: %w", err)
		}
	}
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM users").Scan(&n); err != nil {
		return false, fmt.Errorf("user store: seed: %w", err)
	}
	if n > 0 {
		return false, nil
	}
	now := s.now()
	for _, u := range demoUsers() {
		if _, err := insert(ctx, tx, u, now); err != nil {
			return false, fmt.Errorf("user store: seed %s: %w", u.GetId(), err)
		}
		if err := s.recordChange(ctx, tx, u.GetId(), userv1.UserChangeKind_USER_CHANGE_KIND_CREATED, now); err != nil {
			return false, fmt.Errorf("user store: seed %s: %w", u.GetId(), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("user store: seed: %w", err)
	}
	s.changed.Notify()
	return true, nil
}

const userColumns = "id, display_name, email, roles, active, create_time"

func scanUser(r sqlitedb.Row) (*userv1.User, error) {
	var (
		u       userv1.User
		roles   string
		active  bool
		created int64
	)
	if err := r.Scan(&u.Id, &u.DisplayName, &u.Email, &roles, &active, &created); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(roles), &u.Roles); err != nil {
		return nil, fmt.Errorf("roles of %s: %w", u.Id, err)
	}
	u.Active = active
	u.CreateTime = timestamppb.New(time.Unix(0, created).UTC())
	return &u, nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func get(ctx context.Context, q queryer, id string) (*userv1.User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, "SELECT "+userColumns+" FROM users WHERE id = $1", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("user %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get user %q: %w", id, err)
	}
	return u, nil
}

// Get returns the user with id, or an error wrapping ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*userv1.User, error) {
	u, err := get(ctx, s.db, id)
	if err != nil {
		return nil, fmt.Errorf("user store: %w", err)
	}
	return u, nil
}

// List returns up to pageSize users ordered by id, starting after the
// position pageToken encodes ("" for the first page). nextPageToken is ""
// on the last page. pageSize ≤ 0 means DefaultPageSize, and sizes above
// MaxPageSize are clamped to it. A token List did not return yields an error
// wrapping ErrBadPageToken.
//
// Pagination is by key, not offset: users added or removed between pages
// neither repeat nor shift the others.
func (s *Store) List(ctx context.Context, pageSize int, pageToken string) (users []*userv1.User, nextPageToken string, err error) {
	pageSize = clampPageSize(pageSize)
	after := ""
	if pageToken != "" {
		if after, err = decodePageToken(pageToken); err != nil {
			return nil, "", fmt.Errorf("user store: list: %w", err)
		}
	}
	// Ask for one more than a page to learn whether another page follows.
	rows, err := s.db.QueryContext(ctx,
		"SELECT "+userColumns+" FROM users WHERE id > $1 ORDER BY id LIMIT $2", after, pageSize+1)
	if err != nil {
		return nil, "", fmt.Errorf("user store: list: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, "", fmt.Errorf("user store: list: %w", err)
		}
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("user store: list: %w", err)
	}
	if len(users) > pageSize {
		users = users[:pageSize]
		nextPageToken = encodePageToken(users[pageSize-1].GetId())
	}
	return users, nextPageToken, nil
}

func clampPageSize(n int) int {
	switch {
	case n <= 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	}
	return n
}

// pageTokenPrefix versions the token format and keeps other tokens (an
// order listing's, say) from being taken for a user id.
const pageTokenPrefix = "u1:"

func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + lastID))
}

func decodePageToken(token string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", ErrBadPageToken
	}
	id, ok := strings.CutPrefix(string(b), pageTokenPrefix)
	if !ok || id == "" || !utf8.ValidString(id) {
		return "", ErrBadPageToken
	}
	return id, nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// insert adds u with create time now, or reports ErrExists.
func insert(ctx context.Context, db execer, u *userv1.User, now time.Time) (*userv1.User, error) {
	out := proto.CloneOf(u)
	out.CreateTime = timestamppb.New(now.UTC())
	roles, err := marshalRoles(out.GetRoles())
	if err != nil {
		return nil, err
	}
	res, err := db.ExecContext(ctx,
		"INSERT INTO users ("+userColumns+") VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
		out.GetId(), out.GetDisplayName(), out.GetEmail(), roles, out.GetActive(), now.UnixNano())
	if err != nil {
		return nil, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("user %q: %w", out.GetId(), ErrExists)
	}
	return out, nil
}

func marshalRoles(roles []string) (string, error) {
	if roles == nil {
		roles = []string{}
	}
	b, err := json.Marshal(roles)
	if err != nil {
		return "", fmt.Errorf("encode roles: %w", err)
	}
	return string(b), nil
}

// Create adds u and returns it with its create time set, and records the
// change (CREATED) in the same transaction. The caller has validated u; an
// existing id yields an error wrapping ErrExists.
func (s *Store) Create(ctx context.Context, u *userv1.User) (*userv1.User, error) {
	if u.GetId() == "" {
		return nil, errors.New("user store: create: empty id")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("user store: create: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	now := s.now()
	out, err := insert(ctx, tx, u, now)
	if err != nil {
		return nil, fmt.Errorf("user store: create: %w", err)
	}
	if err := s.recordChange(ctx, tx, out.GetId(), userv1.UserChangeKind_USER_CHANGE_KIND_CREATED, now); err != nil {
		return nil, fmt.Errorf("user store: create: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("user store: create: %w", err)
	}
	s.changed.Notify()
	return out, nil
}

// UpdatableFields returns the field paths Update accepts, in the order it
// applies them.
func UpdatableFields() []string { return []string{"display_name", "email", "roles", "active"} }

// Update sets the fields of the user u.Id named in paths (display_name,
// email, roles, active) to their values in u, in one transaction, and
// returns the updated user. Other fields of u are ignored. The change is
// recorded in the same transaction: DEACTIVATED when paths name active and
// the user is now inactive, UPDATED otherwise. An unknown path, or no path
// at all, yields an error wrapping ErrBadField; a missing user one wrapping
// ErrNotFound.
func (s *Store) Update(ctx context.Context, u *userv1.User, paths []string) (*userv1.User, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("user store: update: no fields named: %w", ErrBadField)
	}
	fields := UpdatableFields()
	set := map[string]bool{}
	for _, p := range paths {
		if !slices.Contains(fields, p) {
			return nil, fmt.Errorf("user store: update: field %q: %w", p, ErrBadField)
		}
		set[p] = true
	}
	// The statement is built from the fixed column names above only; values
	// are bound.
	var (
		assignments []string
		args        []any
	)
	for _, f := range fields {
		if !set[f] {
			continue
		}
		assignments = append(assignments, f+" = $"+strconv.Itoa(len(assignments)+1))
		switch f {
		case "display_name":
			args = append(args, u.GetDisplayName())
		case "email":
			args = append(args, u.GetEmail())
		case "roles":
			roles, err := marshalRoles(u.GetRoles())
			if err != nil {
				return nil, fmt.Errorf("user store: update: %w", err)
			}
			args = append(args, roles)
		case "active":
			args = append(args, u.GetActive())
		}
	}
	args = append(args, u.GetId())
	where := " WHERE id = $" + strconv.Itoa(len(args))

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("user store: update: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, "UPDATE users SET "+strings.Join(assignments, ", ")+where, args...)
	if err != nil {
		return nil, fmt.Errorf("user store: update %q: %w", u.GetId(), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, fmt.Errorf("user store: update %q: %w", u.GetId(), err)
	}
	if n == 0 {
		return nil, fmt.Errorf("user store: update: user %q: %w", u.GetId(), ErrNotFound)
	}
	out, err := get(ctx, tx, u.GetId())
	if err != nil {
		return nil, fmt.Errorf("user store: update: %w", err)
	}
	kind := userv1.UserChangeKind_USER_CHANGE_KIND_UPDATED
	if set["active"] && !out.GetActive() {
		kind = userv1.UserChangeKind_USER_CHANGE_KIND_DEACTIVATED
	}
	if err := s.recordChange(ctx, tx, out.GetId(), kind, s.now()); err != nil {
		return nil, fmt.Errorf("user store: update %q: %w", u.GetId(), err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("user store: update %q: %w", u.GetId(), err)
	}
	s.changed.Notify()
	return out, nil
}
