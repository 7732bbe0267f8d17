package sqlitedb_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/palisade-rpc/palisade/services/internal/sqlitedb"
)

func files(m map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for name, body := range m {
		fsys[name] = &fstest.MapFile{Data: []byte(body)}
	}
	return fsys
}

var twoMigrations = files(map[string]string{
	"0001_things.sql": "CREATE TABLE things (id TEXT PRIMARY KEY);\nCREATE TABLE parts (thing_id TEXT NOT NULL REFERENCES things(id));",
	"0002_more.sql":   "ALTER TABLE things ADD COLUMN name TEXT NOT NULL DEFAULT '';",
})

func TestOpenMigratesOnceAndSetsPragmas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A path with characters a DSN could misread, in a directory that does not exist yet.
	path := filepath.Join(t.TempDir(), "new dir", "a?b#c%d.db")

	db, err := sqlitedb.Open(ctx, path, twoMigrations)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO things (id, name) VALUES ('x', 'X')"); err != nil {
		t.Fatalf("insert after migration: %v", err)
	}
	// Both statements of 0001 ran, and foreign keys are enforced.
	if _, err := db.ExecContext(ctx, "INSERT INTO parts (thing_id) VALUES ('missing')"); err == nil {
		t.Fatal("foreign key not enforced")
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	var busy int
	if err := db.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil || busy != sqlitedb.BusyTimeoutMillis {
		t.Fatalf("busy_timeout = %d, %v", busy, err)
	}
	if v, err := sqlitedb.SchemaVersion(ctx, db); err != nil || v != 2 {
		t.Fatalf("schema version %d, %v; want 2", v, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("database file mode %v, want 0600", perm)
	}
	dir, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := dir.Mode().Perm(); perm != 0o700 {
		t.Errorf("directory mode %v, want 0700", perm)
	}

	// Reopening applies nothing again (0001 would fail: its tables exist) and keeps the data.
	db, err = sqlitedb.Open(ctx, path, twoMigrations)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer db.Close()
	var name string
	if err := db.QueryRowContext(ctx, "SELECT name FROM things WHERE id = 'x'").Scan(&name); err != nil || name != "X" {
		t.Fatalf("data after reopen: %q, %v", name, err)
	}
}

func TestMigrateAppliesOnlyNewFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	first := files(map[string]string{"0001_things.sql": "CREATE TABLE things (id TEXT PRIMARY KEY);"})
	db, err := sqlitedb.Open(ctx, path, first)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// The next release adds 0002; only it runs.
	second := files(map[string]string{
		"0001_things.sql": "CREATE TABLE things (id TEXT PRIMARY KEY);",
		"0002_name.sql":   "ALTER TABLE things ADD COLUMN name TEXT;",
	})
	db, err = sqlitedb.Open(ctx, path, second)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	defer db.Close()
	if v, err := sqlitedb.SchemaVersion(ctx, db); err != nil || v != 2 {
		t.Fatalf("schema version %d, %v; want 2", v, err)
	}
	// An older program refuses the newer database.
	if err := sqlitedb.Migrate(ctx, db, first); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("downgrade: %v, want a refusal", err)
	}
}

func TestMigrateRefusesBadSets(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		fsys fstest.MapFS
		want string
	}{
		"empty":          {fsys: files(nil), want: "no migrations"},
		"gap":            {fsys: files(map[string]string{"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"}), want: "want version 0002"},
		"duplicate":      {fsys: files(map[string]string{"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}), want: "want version 0002"},
		"does not start": {fsys: files(map[string]string{"0002_a.sql": "SELECT 1;"}), want: "want version 0001"},
		"bad name":       {fsys: files(map[string]string{"1_a.sql": "SELECT 1;"}), want: "name must look like"},
		"bad SQL":        {fsys: files(map[string]string{"0001_a.sql": "CREATE TABLE a (id TEXT);", "0002_b.sql": "CREATE TABLE oops ("}), want: "apply 0002_b.sql"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "db")
			db, err := sqlitedb.Open(ctx, path, c.fsys)
			if err == nil {
				db.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if name == "bad SQL" {
				// The transaction rolled back: 0001 is not half-applied.
				ok := files(map[string]string{"0001_a.sql": "CREATE TABLE a (id TEXT);"})
				db, err := sqlitedb.Open(ctx, path, ok)
				if err != nil {
					t.Fatalf("reopen with good set: %v", err)
				}
				defer db.Close()
			}
		})
	}
}

func TestOpenRefusesEmptyPath(t *testing.T) {
	t.Parallel()
	if _, err := sqlitedb.Open(context.Background(), "", twoMigrations); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
}
