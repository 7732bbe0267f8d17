// Package pgdb opens the PostgreSQL databases of the sample services, the
// store of a fleet of replicas (SQLite, package sqlitedb, is the embedded
// default): a postgres:// URL opened with pgx's database/sql driver, with
// schema migrations applied on open, safely when several replicas start at
// once, and a Listener for the notifications one replica sends the others.
//
// # Why database/sql
//
// The stores run the same SQL on SQLite and PostgreSQL through one
// *sql.DB, so one Store type serves both, its queries written once with
// $1-style parameters (which modernc.org/sqlite reads as positional too).
// pgxpool's richer API would mean a second copy of every query. The one
// thing database/sql cannot do, wait for a notification, the Listener does
// on a pgx connection of its own.
//
// # Migrations
//
// As with sqlitedb, a service's schema is a set of files
// NNNN_description.sql (package migration). The version a database has
// reached is a row of the table schema_versions, keyed by the service's
// name, so two services may share a database. Migrate runs in one
// transaction that first takes a transaction-level advisory lock
// (MigrationLockKey): replicas starting at once apply the migrations one
// after another, and all but the first find nothing to do. A database whose
// version is higher than the highest file is refused.
package pgdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/palisade-rpc/palisade/services/internal/migration"
)

// Pool bounds of the *sql.DB Open returns: each store holds at most
// MaxOpenConns connections to the server (plus a Listener's), so a fleet's
// size times this stays under the server's max_connections.
const (
	MaxOpenConns    = 10
	ConnMaxIdleTime = 5 * time.Minute
)

// MigrationLockKey is the advisory lock Migrate holds while it reads and
// applies migrations: the bytes of "palisade" as an int64.
const MigrationLockKey int64 = 0x70616c6973616465

// IsURL reports whether dsn names a PostgreSQL database (a postgres:// or
// postgresql:// URL) rather than a SQLite file.
func IsURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// ParseURL parses a postgres:// URL. Its error never holds the URL, which
// may hold a password.
func ParseURL(url string) (*pgx.ConnConfig, error) {
	if !IsURL(url) {
		return nil, errors.New("pgdb: the database URL must start with postgres:// or postgresql://")
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgconn's error quotes the URL between backquotes, its password
		// masked on a best-effort basis, then says what is wrong: keep only
		// that, and do not wrap the error, which holds the URL.
		msg := err.Error()
		reason := "malformed"
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			reason = msg[i+len("`: "):]
		}
		return nil, errors.New("pgdb: the database URL does not parse (the URL is left out: it may hold a password): " + reason)
	}
	return cfg, nil
}

// Open connects to the database at url and brings the schema of service up
// to date with Migrate. The caller closes the returned *sql.DB. Errors
// never hold the URL.
func Open(ctx context.Context, url, service string, migrations fs.FS) (*sql.DB, error) {
	cfg, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(MaxOpenConns)
	db.SetMaxIdleConns(MaxOpenConns)
	db.SetConnMaxIdleTime(ConnMaxIdleTime)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("pgdb: open: %w", err)
	}
	if err := Migrate(ctx, db, service, migrations); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("pgdb: open: %w", err)
	}
	return db, nil
}

// Migrate brings the schema of service in db up to date with the migration
// files at the root of migrations (see the package documentation). It runs
// in one transaction, under the advisory lock MigrationLockKey: either
// every pending migration is applied or none is, and concurrent calls apply
// them once.
func Migrate(ctx context.Context, db *sql.DB, service string, migrations fs.FS) error {
	if service == "" {
		return errors.New("migrate: empty service name")
	}
	files, err := migration.Read(migrations)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	// Held until the transaction ends: a replica starting at the same time
	// waits here, then finds the schema up to date.
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", MigrationLockKey); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_versions (
    service TEXT    NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version > 0)
)`); err != nil {
		return fmt.Errorf("migrate: create schema_versions: %w", err)
	}
	current, err := SchemaVersion(ctx, tx, service)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	latest := files[len(files)-1].Version
	if current > latest {
		return fmt.Errorf("migrate: %s schema version %d is newer than this program's (%d)", service, current, latest)
	}
	if current == latest {
		return nil
	}
	for _, f := range files[current:] {
		if _, err := tx.ExecContext(ctx, f.SQL); err != nil {
			return fmt.Errorf("migrate: apply %s: %w", f.Name, err)
		}
	}
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO schema_versions (service, version) VALUES ($1, $2) ON CONFLICT (service) DO UPDATE SET version = excluded.version",
		service, latest); err != nil {
		return fmt.Errorf("migrate: set schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// Querier is what SchemaVersion needs: a *sql.DB, *sql.Conn or *sql.Tx.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// SchemaVersion returns the schema version of service in the database q
// reads: 0 when no migration of it was applied. schema_versions must exist.
func SchemaVersion(ctx context.Context, q Querier, service string) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, "SELECT version FROM schema_versions WHERE service = $1", service).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
