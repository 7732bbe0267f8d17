// Package sqlitedb opens the SQLite databases of the sample services: one
// file per service, opened with the pure-Go modernc.org/sqlite driver, with
// the same connection settings everywhere and schema migrations applied on
// open.
//
// # Connection settings
//
// Every connection the pool opens runs, before it is used:
//
//	PRAGMA busy_timeout = 5000   wait up to 5s for a lock instead of failing with SQLITE_BUSY
//	PRAGMA foreign_keys = ON     enforce REFERENCES clauses
//	PRAGMA journal_mode = WAL    readers do not block the writer, nor the writer readers
//	PRAGMA synchronous = NORMAL  durable at every checkpoint; the usual choice with WAL
//
// and transactions begin with BEGIN IMMEDIATE, so a transaction that will
// write takes the write lock when it starts rather than failing with
// SQLITE_BUSY when it first writes.
//
// # Migrations
//
// A service keeps its schema in an fs.FS (normally an embed.FS) of files
// named NNNN_description.sql, numbered from 0001 without gaps (package
// migration reads them). The schema version of a database is its PRAGMA
// user_version: Migrate applies, in one transaction, every file numbered
// above it and sets user_version to the highest number. Applying the same
// set twice is a no-op. A database whose version is higher than the highest
// file is refused: it was written by a newer binary. To change a schema, add
// a file; never edit one that shipped.
package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/palisade-rpc/palisade/services/internal/migration"
)

// DriverName is the database/sql driver the databases are opened with.
const DriverName = "sqlite"

// BusyTimeoutMillis is how long a connection waits for a lock held by
// another connection before it gives up with SQLITE_BUSY.
const BusyTimeoutMillis = 5000

// Open opens the SQLite database file at path, creating it (mode 0600) and
// its parent directory (mode 0700) when missing, and applies migrations to
// it with Migrate. The caller closes the returned *sql.DB.
func Open(ctx context.Context, path string, migrations fs.FS) (*sql.DB, error) {
	if path == "" {
		return nil, errors.New("sqlitedb: open: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	// Create the file ourselves so that it is private: SQLite would create it
	// with the umask's mode, and gives the -wal and -shm files the same mode
	// as the database file.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	db, err := sql.Open(DriverName, dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	if err := Migrate(ctx, db, migrations); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}
	return db, nil
}

// dsn returns the data source name for the absolute path abs: a file: URI,
// so that a path holding '?', '#' or '%' is escaped rather than misread, with
// the connection settings the package documents.
func dsn(abs string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout("+strconv.Itoa(BusyTimeoutMillis)+")")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: q.Encode()}
	if u.Path[0] != '/' { // a Windows path such as C:/x needs the empty authority too
		u.Path = "/" + u.Path
	}
	return u.String()
}

// Migrate brings the schema of db up to date with the migration files at the
// root of migrations (see the package documentation). It runs in one
// transaction: either every pending migration is applied or none is.
func Migrate(ctx context.Context, db *sql.DB, migrations fs.FS) error {
	ms, err := migration.Read(migrations)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	current, err := SchemaVersion(ctx, tx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	latest := ms[len(ms)-1].Version
	if current > latest {
		return fmt.Errorf("migrate: database schema version %d is newer than this program's (%d)", current, latest)
	}
	if current == latest {
		return nil
	}
	for _, m := range ms[current:] {
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("migrate: apply %s: %w", m.Name, err)
		}
	}
	// PRAGMA takes no parameters; latest is an int we parsed, not input.
	if _, err := tx.ExecContext(ctx, "PRAGMA user_version = "+strconv.Itoa(latest)); err != nil {
		return fmt.Errorf("migrate: set schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// Row is a *sql.Row or *sql.Rows: what a store's scan function reads one
// record from.
type Row interface {
	Scan(dest ...any) error
}

// Querier is what SchemaVersion needs: a *sql.DB, *sql.Conn or *sql.Tx.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// SchemaVersion returns the schema version (PRAGMA user_version) of the database q reads.
func SchemaVersion(ctx context.Context, q Querier) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
