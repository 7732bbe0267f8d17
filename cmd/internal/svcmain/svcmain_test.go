package svcmain

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/palisade-rpc/palisade/policy"
)

// TestPolicyAllowUntested: a --policy-dir without rego tests stops the
// service at start, with an error that names the flag; with
// --policy-allow-untested it starts, and the load is logged as a warning.
func TestPolicyAllowUntested(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte("package palisade.authz\nallow if true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(args ...string) (*policy.Engine, string, error) {
		var f Flags
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f.Register(fs, "usersvc", "127.0.0.1:0")
		if err := fs.Parse(append([]string{"--policy-dir", dir}, args...)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		log := &syncBuffer{}
		e, err := f.Authorizer(ctx, slog.New(slog.NewTextHandler(log, nil)), nil, nil, "")
		return e, log.String(), err
	}
	if _, _, err := start(); !errors.Is(err, policy.ErrUntested) || !strings.Contains(err.Error(), "--policy-allow-untested") {
		t.Fatalf("untested --policy-dir: %v, want ErrUntested naming the flag", err)
	}
	e, log, err := start("--policy-allow-untested")
	if err != nil || e == nil {
		t.Fatalf("with --policy-allow-untested: %v", err)
	}
	if !strings.Contains(log, "level=WARN") || !strings.Contains(log, "WITHOUT rego tests") {
		t.Fatalf("the untested load was not logged as a warning:\n%s", log)
	}
}

// syncBuffer is a log sink the policy watcher may write to concurrently.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
