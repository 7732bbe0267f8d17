package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestMissingPostgreSQLSaysWhatToInstall: with no initdb anywhere, the
// error names the script that installs it.
func TestMissingPostgreSQLSaysWhatToInstall(t *testing.T) {
	t.Parallel()
	notFound := func(string) (string, error) { return "", errors.New("not found") }
	_, err := findBinDirIn(notFound, filepath.Join(t.TempDir(), "*", "bin", "initdb"))
	if err == nil || !strings.Contains(err.Error(), "scripts/install-deps.sh") {
		t.Fatalf("error %v; want one naming scripts/install-deps.sh", err)
	}
}

// TestServerLifecycle: a database per call, each empty and separate; Close
// stops the server and removes its directory.
func TestServerLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var urls []string
	t.Run("databases", func(t *testing.T) {
		a, b := s.NewDatabase(t), s.NewDatabase(t)
		urls = append(urls, a, b)
		if a == b {
			t.Fatalf("two databases at %s", a)
		}
		conn, err := pgx.Connect(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
			t.Fatal(err)
		}
		conn2, err := pgx.Connect(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		defer conn2.Close(ctx)
		if _, err := conn2.Exec(ctx, "SELECT * FROM t"); err == nil {
			t.Fatal("the second database sees the first one's table")
		}
	})
	// The subtest's cleanup dropped its databases.
	if conn, err := pgx.Connect(ctx, urls[0]); err == nil {
		conn.Close(ctx)
		t.Fatal("a database outlived its test")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory left behind: %v", err)
	}
	if conn, err := pgx.Connect(ctx, s.URL("postgres")); err == nil {
		conn.Close(ctx)
		t.Fatal("the server still accepts connections after Close")
	}
}
