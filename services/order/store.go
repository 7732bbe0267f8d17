package order

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/services/internal/broadcast"
	"github.com/palisade-rpc/palisade/services/internal/pgdb"
	"github.com/palisade-rpc/palisade/services/internal/sqlitedb"
)

// Errors the Store's methods wrap; test for them with errors.Is.
var (
	// ErrNotFound: no order has the id.
	ErrNotFound = errors.New("order not found")
	// ErrBadPageToken: the page token was not one List returned.
	ErrBadPageToken = errors.New("malformed page token")
)

// Page sizes of List.
const (
	// DefaultPageSize is the page size List uses when asked for 0 or fewer orders.
	DefaultPageSize = 50
	// MaxPageSize is the largest page List returns; larger requests are clamped to it.
	MaxPageSize = 500
)

// IDPrefix starts every order id. The rest is 26 characters of lower-case
// base32: 128 random bits.
const IDPrefix = "ord_"

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// Store keeps orders in a database: a SQLite file, the embedded default, or
// PostgreSQL, which several replicas of the service can share. It is safe
// for concurrent use.
type Store struct {
	db *sql.DB
	// greatest is the SQL function of the largest of its arguments:
	// SQLite's MAX, PostgreSQL's GREATEST. The rest of the SQL is the same
	// on both backends.
	greatest string
	now      func() time.Time
	// statusChanged is notified when SetStatus commits: by this store, and
	// by listener when another replica's SetStatus commits (PostgreSQL).
	statusChanged broadcast.Signal
	listener      *pgdb.Listener // nil with SQLite
	// id tells this store's notifications from other replicas' (PostgreSQL).
	id string
}

// statusChannel is the PostgreSQL notification channel of status changes;
// the payload is the id of the store that made the change.
const statusChannel = "order_status"

// StoreOption configures OpenStore.
type StoreOption interface {
	applyStore(*storeConfig)
}

type storeConfig struct {
	logger *slog.Logger
}

type storeOptionFunc func(*storeConfig)

func (f storeOptionFunc) applyStore(c *storeConfig) { f(c) }

// WithStoreLogger sets the logger of a PostgreSQL store's status listener,
// which logs losing and regaining its connection (default slog.Default()).
func WithStoreLogger(l *slog.Logger) StoreOption {
	return storeOptionFunc(func(c *storeConfig) {
		if l != nil {
			c.logger = l
		}
	})
}

// OpenStore opens the order database db and brings its schema up to date
// (the files in migrations/sqlite or migrations/postgres). db is a SQLite
// file path, the file and its directory created when missing (see package
// sqlitedb), or a postgres:// URL (see package pgdb). A PostgreSQL store
// also listens for the status changes other replicas sharing the database
// commit, and closes StatusSignal on each. Errors never hold the URL, which
// may hold a password.
func OpenStore(ctx context.Context, db string, opts ...StoreOption) (*Store, error) {
	cfg := storeConfig{logger: slog.Default()}
	for _, o := range opts {
		o.applyStore(&cfg)
	}
	if !pgdb.IsURL(db) {
		migrations, err := fs.Sub(migrationFiles, "migrations/sqlite")
		if err != nil {
			return nil, fmt.Errorf("order store: %w", err)
		}
		sdb, err := sqlitedb.Open(ctx, db, migrations)
		if err != nil {
			return nil, fmt.Errorf("order store: %w", err)
		}
		return &Store{db: sdb, greatest: "MAX", now: time.Now}, nil
	}
	migrations, err := fs.Sub(migrationFiles, "migrations/postgres")
	if err != nil {
		return nil, fmt.Errorf("order store: %w", err)
	}
	sdb, err := pgdb.Open(ctx, db, "order", migrations)
	if err != nil {
		return nil, fmt.Errorf("order store: %w", err)
	}
	var id [8]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	s := &Store{db: sdb, greatest: "GREATEST", now: time.Now, id: hex.EncodeToString(id[:])}
	if s.listener, err = pgdb.Listen(ctx, db, statusChannel, s.notified, cfg.logger); err != nil {
		_ = sdb.Close()
		return nil, fmt.Errorf("order store: %w", err)
	}
	return s, nil
}

// notified is called by the listener with the payload of a notification,
// or "" when it may have missed some.
func (s *Store) notified(payload string) {
	if payload == s.id {
		return // this store's own change: it closed the signal when it committed
	}
	s.statusChanged.Notify()
}

// Close stops listening for status changes and closes the database.
func (s *Store) Close() error {
	if s.listener != nil {
		_ = s.listener.Close() // never fails
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("order store: close: %w", err)
	}
	return nil
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns IDPrefix followed by 128 random bits in lower-case base32.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
	return IDPrefix + idEncoding.EncodeToString(b[:])
}

// Create stores o and its items in one transaction, giving it a new id and
// the current time as create_time, and returns the stored order. o itself
// is not modified. The caller has validated o: Create only refuses an order
// without a user id or items.
func (s *Store) Create(ctx context.Context, o *orderv1.Order) (*orderv1.Order, error) {
	out, err := s.CreateAll(ctx, []*orderv1.Order{o})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// CreateAll stores orders as Create does, all in one transaction: either
// every order is stored or none is.
func (s *Store) CreateAll(ctx context.Context, orders []*orderv1.Order) ([]*orderv1.Order, error) {
	if len(orders) == 0 {
		return nil, errors.New("order store: create: no orders")
	}
	for _, o := range orders {
		if o.GetUserId() == "" || len(o.GetItems()) == 0 {
			return nil, errors.New("order store: create: an order needs a user id and items")
		}
	}
	now := s.now().UTC()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("order store: create: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	insertOrder, err := tx.PrepareContext(ctx,
		"INSERT INTO orders (id, user_id, status, create_time, user_display_name, status_time) VALUES ($1, $2, $3, $4, $5, $6)")
	if err != nil {
		return nil, fmt.Errorf("order store: create: %w", err)
	}
	defer insertOrder.Close()
	insertItem, err := tx.PrepareContext(ctx, "INSERT INTO order_items (order_id, position, sku, quantity) VALUES ($1, $2, $3, $4)")
	if err != nil {
		return nil, fmt.Errorf("order store: create: %w", err)
	}
	defer insertItem.Close()
	out := make([]*orderv1.Order, len(orders))
	for n, o := range orders {
		o = proto.CloneOf(o)
		o.Id = newID()
		o.CreateTime = timestamppb.New(now)
		if _, err := insertOrder.ExecContext(ctx,
			o.GetId(), o.GetUserId(), o.GetStatus().String(), now.UnixNano(), o.GetUserDisplayName(), now.UnixNano()); err != nil {
			return nil, fmt.Errorf("order store: create: %w", err)
		}
		for i, item := range o.GetItems() {
			if _, err := insertItem.ExecContext(ctx, o.GetId(), i, item.GetSku(), item.GetQuantity()); err != nil {
				return nil, fmt.Errorf("order store: create: item %d: %w", i, err)
			}
		}
		out[n] = o
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("order store: create: %w", err)
	}
	return out, nil
}

const orderColumns = "id, user_id, status, create_time, user_display_name"

func scanOrder(r sqlitedb.Row) (*orderv1.Order, error) {
	var (
		o       orderv1.Order
		status  string
		created int64
	)
	if err := r.Scan(&o.Id, &o.UserId, &status, &created, &o.UserDisplayName); err != nil {
		return nil, err
	}
	v, ok := orderv1.OrderStatus_value[status]
	if !ok {
		return nil, fmt.Errorf("order %s: unknown status %q", o.Id, status)
	}
	o.Status = orderv1.OrderStatus(v)
	o.CreateTime = timestamppb.New(time.Unix(0, created).UTC())
	return &o, nil
}

// Get returns the order with id, or an error wrapping ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*orderv1.Order, error) {
	o, err := scanOrder(s.db.QueryRowContext(ctx, "SELECT "+orderColumns+" FROM orders WHERE id = $1", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("order store: order %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("order store: get %q: %w", id, err)
	}
	if err := s.loadItems(ctx, []*orderv1.Order{o}); err != nil {
		return nil, fmt.Errorf("order store: get %q: %w", id, err)
	}
	return o, nil
}

// List returns up to pageSize orders of userID, newest first, starting after
// the position pageToken encodes ("" for the first page). nextPageToken is
// "" on the last page. pageSize ≤ 0 means DefaultPageSize, and sizes above
// MaxPageSize are clamped to it. A token List did not return yields an
// error wrapping ErrBadPageToken.
//
// Pagination is by key (create time, then id), not offset: orders placed
// while a client pages through the list do not shift or repeat the others.
func (s *Store) List(ctx context.Context, userID string, pageSize int, pageToken string) (orders []*orderv1.Order, nextPageToken string, err error) {
	if userID == "" {
		return nil, "", errors.New("order store: list: empty user id")
	}
	pageSize = clampPageSize(pageSize)
	query := "SELECT " + orderColumns + " FROM orders WHERE user_id = $1"
	args := []any{userID}
	if pageToken != "" {
		t, id, err := decodePageToken(pageToken)
		if err != nil {
			return nil, "", fmt.Errorf("order store: list: %w", err)
		}
		query += " AND (create_time < $2 OR (create_time = $2 AND id < $3))"
		args = append(args, t, id)
	}
	// Ask for one more than a page to learn whether another page follows.
	query += " ORDER BY create_time DESC, id DESC LIMIT $" + strconv.Itoa(len(args)+1)
	args = append(args, pageSize+1)

	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, "", fmt.Errorf("order store: list: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, "", fmt.Errorf("order store: list: %w", err)
		}
		orders = append(orders, o)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("order store: list: %w", err)
	}
	if err := rows.Close(); err != nil {
		return nil, "", fmt.Errorf("order store: list: %w", err)
	}
	if len(orders) > pageSize {
		orders = orders[:pageSize]
		last := orders[pageSize-1]
		nextPageToken = encodePageToken(last.GetCreateTime().AsTime().UnixNano(), last.GetId())
	}
	if err := s.loadItems(ctx, orders); err != nil {
		return nil, "", fmt.Errorf("order store: list: %w", err)
	}
	return orders, nextPageToken, nil
}

// loadItems fills in the items of orders with one query.
func (s *Store) loadItems(ctx context.Context, orders []*orderv1.Order) error {
	if len(orders) == 0 {
		return nil
	}
	byID := make(map[string]*orderv1.Order, len(orders))
	args := make([]any, 0, len(orders))
	for _, o := range orders {
		byID[o.GetId()] = o
		args = append(args, o.GetId())
	}
	rows, err := s.db.QueryContext(ctx,
		"SELECT order_id, sku, quantity FROM order_items WHERE order_id IN ("+placeholders(len(args))+") ORDER BY order_id, position", args...)
	if err != nil {
		return fmt.Errorf("load items: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			orderID string
			item    orderv1.LineItem
		)
		if err := rows.Scan(&orderID, &item.Sku, &item.Quantity); err != nil {
			return fmt.Errorf("load items: %w", err)
		}
		if o := byID[orderID]; o != nil {
			o.Items = append(o.Items, &item)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load items: %w", err)
	}
	return nil
}

// Count returns how many orders are stored.
func (s *Store) Count(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM orders").Scan(&n); err != nil {
		return 0, fmt.Errorf("order store: count: %w", err)
	}
	return n, nil
}

// placeholders returns "$1, $2, …, $n".
func placeholders(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(i+1))
	}
	return b.String()
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

// pageTokenPrefix versions the token format and tells it from other
// services' tokens.
const pageTokenPrefix = "o1:"

// encodePageToken encodes the position of the last order of a page: its
// create time (Unix nanoseconds) and id.
func encodePageToken(createTime int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + strconv.FormatInt(createTime, 10) + ":" + id))
}

func decodePageToken(token string) (createTime int64, id string, err error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return 0, "", ErrBadPageToken
	}
	rest, ok := strings.CutPrefix(string(b), pageTokenPrefix)
	if !ok {
		return 0, "", ErrBadPageToken
	}
	ts, id, ok := strings.Cut(rest, ":")
	if !ok || !strings.HasPrefix(id, IDPrefix) {
		return 0, "", ErrBadPageToken
	}
	createTime, err = strconv.ParseInt(ts, 10, 64)
	if err != nil || createTime < 0 {
		return 0, "", ErrBadPageToken
	}
	return createTime, id, nil
}
