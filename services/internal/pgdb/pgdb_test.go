package pgdb_test

import (
	"context"
	"database/sql"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"go.uber.org/goleak"

	"github.com/palisade-rpc/palisade/services/internal/pgdb"
	"github.com/palisade-rpc/palisade/services/internal/pgtest"
)

var pg pgtest.Shared

// TestMain stops the package's PostgreSQL server after the tests, then
// fails them if any goroutine (a listener's) is left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(pg.StopAfter(m)) }

func files(m map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for name, body := range m {
		fsys[name] = &fstest.MapFile{Data: []byte(body)}
	}
	return fsys
}

// twoMigrations fail if applied twice: their CREATE and ALTER have no IF
// NOT EXISTS.
var twoMigrations = files(map[string]string{
	"0001_things.sql": "CREATE TABLE things (id TEXT PRIMARY KEY);\nCREATE TABLE parts (thing_id TEXT NOT NULL REFERENCES things (id));",
	"0002_more.sql":   "ALTER TABLE things ADD COLUMN name TEXT NOT NULL DEFAULT '';",
})

func open(t *testing.T, url, service string, migrations fstest.MapFS) *sql.DB {
	t.Helper()
	db, err := pgdb.Open(context.Background(), url, service, migrations)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestOpenMigratesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pg.NewDatabase(t)
	db := open(t, url, "things", twoMigrations)
	if _, err := db.ExecContext(ctx, "INSERT INTO things (id, name) VALUES ('x', 'X')"); err != nil {
		t.Fatalf("insert after migration: %v", err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO parts (thing_id) VALUES ('missing')"); err == nil {
		t.Fatal("both statements of 0001 did not run: no foreign key")
	}
	if v, err := pgdb.SchemaVersion(ctx, db, "things"); err != nil || v != 2 {
		t.Fatalf("schema version %d, %v; want 2", v, err)
	}
	// Reopening applies nothing again (0001 would fail) and keeps the data.
	db = open(t, url, "things", twoMigrations)
	var name string
	if err := db.QueryRowContext(ctx, "SELECT name FROM things WHERE id = 'x'").Scan(&name); err != nil || name != "X" {
		t.Fatalf("data after reopen: %q, %v", name, err)
	}
	// An older program refuses the newer database.
	older := files(map[string]string{"0001_things.sql": "CREATE TABLE things (id TEXT PRIMARY KEY);"})
	if err := pgdb.Migrate(ctx, db, "things", older); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("downgrade: %v, want a refusal", err)
	}
	// Another service in the same database has its own version.
	other := files(map[string]string{"0001_others.sql": "CREATE TABLE others (id TEXT PRIMARY KEY);"})
	open(t, url, "others", other)
	if v, err := pgdb.SchemaVersion(ctx, db, "others"); err != nil || v != 1 {
		t.Fatalf("other service's version %d, %v; want 1", v, err)
	}
}

// TestConcurrentOpensMigrateOnce opens one fresh database from many
// replicas at once: the advisory lock makes them apply the migrations one
// after another, so exactly one applies them and none fails.
func TestConcurrentOpensMigrateOnce(t *testing.T) {
	t.Parallel()
	const replicas = 8
	url := pg.NewDatabase(t)
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make(chan error, replicas)
	)
	for range replicas {
		wg.Go(func() {
			<-start
			db, err := pgdb.Open(context.Background(), url, "things", twoMigrations)
			if err != nil {
				errs <- err
				return
			}
			errs <- db.Close()
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent open: %v", err)
		}
	}
	db := open(t, url, "things", twoMigrations)
	if v, err := pgdb.SchemaVersion(context.Background(), db, "things"); err != nil || v != 2 {
		t.Fatalf("schema version %d, %v; want 2", v, err)
	}
}

func TestMigrateRollsBackAFailedSet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pg.NewDatabase(t)
	bad := files(map[string]string{"0001_a.sql": "CREATE TABLE a (id TEXT);", "0002_b.sql": "CREATE TABLE oops ("})
	if db, err := pgdb.Open(ctx, url, "a", bad); err == nil || !strings.Contains(err.Error(), "apply 0002_b.sql") {
		if db != nil {
			db.Close()
		}
		t.Fatalf("Open with bad SQL: %v", err)
	}
	// The transaction rolled back: 0001 is not half-applied, so it applies now.
	db := open(t, url, "a", files(map[string]string{"0001_a.sql": "CREATE TABLE a (id TEXT);"}))
	if v, err := pgdb.SchemaVersion(ctx, db, "a"); err != nil || v != 1 {
		t.Fatalf("schema version %d, %v; want 1", v, err)
	}
	for name, set := range map[string]fstest.MapFS{
		"empty": files(nil),
		"gap":   files(map[string]string{"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"}),
	} {
		if err := pgdb.Migrate(ctx, db, "a", set); err == nil {
			t.Errorf("Migrate(%s) succeeded", name)
		}
	}
}

// TestErrorsNeverHoldThePassword: a URL that does not parse, and one whose
// server refuses the password, fail without the password in the error.
func TestErrorsNeverHoldThePassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-pa55"
	url := pg.NewDatabase(t)
	ctx := context.Background()
	for _, bad := range []string{
		"postgres://app:" + secret + "@127.0.0.1:notaport/db",
		"postgres://app:" + secret + "@127.0.0.1/db?sslmode=bogus",
		"postgres://app:" + secret + "%zz@127.0.0.1/db",
		"postgres://app:" + secret + "@[::1/db",
		"postgres://app@127.0.0.1/db?password=" + secret + "&connect_timeout=x",
		"postgres://app:" + secret + " x@127.0.0.1/db",
		"postgresql://app:" + secret + "@@127.0.0.1:5432:5432/db",
	} {
		_, err := pgdb.Open(ctx, bad, "x", twoMigrations)
		if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "does not parse") {
			t.Fatalf("unparsable URL: %v", err)
		}
	}
	if _, err := pgdb.Open(ctx, "postgres://app@127.0.0.1:1/db?password="+secret+"&connect_timeout=5", "x", twoMigrations); err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("unreachable server: %v", err)
	}
	// A password the server does not need (it trusts loopback), and a
	// database it does not have.
	bad := strings.Replace(url, "postgres@", "postgres:"+secret+"@", 1)
	bad = bad[:strings.LastIndex(bad, "/")] + "/no_such_db?sslmode=disable"
	if _, err := pgdb.Open(ctx, bad, "x", twoMigrations); err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("refused connection: %v", err)
	}
	if _, err := pgdb.Listen(ctx, bad, "c", func(string) {}, nil); err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("refused listener: %v", err)
	}
	if _, err := pgdb.Open(ctx, "/var/lib/users.db", "x", twoMigrations); err == nil {
		t.Fatal("Open accepted a file path")
	}
}

// TestListenerSurvivesATerminatedConnection: notifications from another
// connection reach the listener; when its connection is terminated it
// reconnects and calls notify once more, for what it may have missed.
func TestListenerSurvivesATerminatedConnection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pg.NewDatabase(t)
	db := open(t, url, "things", twoMigrations)
	calls := make(chan string, 100)
	l, err := pgdb.Listen(ctx, url, "some channel", func(payload string) { calls <- payload }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	wantCall := func(what, payload string) {
		t.Helper()
		select {
		case got := <-calls:
			if got != payload {
				t.Fatalf("%s: notify(%q), want notify(%q)", what, got, payload)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no notify call", what)
		}
	}
	send := func(payload string) {
		t.Helper()
		if _, err := db.ExecContext(ctx, `SELECT pg_notify('some channel', $1)`, payload); err != nil {
			t.Fatal(err)
		}
	}
	send("1")
	wantCall("a notification", "1")

	// A notification sent in a transaction is delivered when it commits.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `NOTIFY "some channel", 'rolled back'`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	send("2")
	wantCall("a rolled-back notification, then another", "2")

	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d listeners, %v; want 1", n, err)
	}
	wantCall("the reconnection", "")
	send("3")
	wantCall("a notification on the new connection", "3")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
