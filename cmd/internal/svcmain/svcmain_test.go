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

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/services/user"
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

// TestPolicyData: the layer's data.json is the default configuration of
// its rules; --trust-domain sets data.palisade.config.trust_domain, and
// --policy-data's file is laid over both, so a deployment adds a delegate
// without a new version of the layer. A --policy-data that is not a JSON
// object stops the service at start.
func TestPolicyData(t *testing.T) {
	t.Parallel()
	dataFile := func(content string) string {
		f := filepath.Join(t.TempDir(), "data.json")
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	start := func(args ...string) (*policy.Engine, error) {
		var f Flags
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f.Register(fs, "usersvc", "127.0.0.1:0")
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		return f.Authorizer(ctx, slog.New(slog.DiscardHandler), nil, user.Policy(), "services/user/policy")
	}
	allowed := func(e *policy.Engine, caller, procedure string) bool {
		t.Helper()
		id, err := spiffeid.Parse(caller)
		if err != nil {
			t.Fatal(err)
		}
		service, method := authz.SplitProcedure(procedure)
		d, err := e.Decide(context.Background(), &authz.Input{
			Procedure: procedure, Service: service, Method: method, StreamType: "unary",
			Principal: &security.Principal{Workload: security.Workload{ID: id}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return d.Allow
	}
	const (
		exchange = "/palisade.token.v1.TokenService/ExchangeToken"
		health   = "/grpc.health.v1.Health/Check"
		billing  = "spiffe://example.org/svc/billing"
	)

	e, err := start()
	if err != nil {
		t.Fatal(err)
	}
	if allowed(e, billing, exchange) || allowed(e, billing, health) {
		t.Fatal("the layer's own data lets spiffe://example.org/svc/billing exchange tokens or check health")
	}
	if !allowed(e, "spiffe://palisade.local/svc/order", exchange) {
		t.Fatal("the layer's data.json delegate may not exchange tokens")
	}

	e, err = start("--trust-domain", "example.org",
		"--policy-data", dataFile(`{"palisade": {"config": {"delegates": ["`+billing+`"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !allowed(e, billing, exchange) {
		t.Error("--policy-data's delegate may not exchange tokens")
	}
	if allowed(e, "spiffe://palisade.local/svc/order", exchange) {
		t.Error("--policy-data's delegates did not replace the layer's")
	}
	if !allowed(e, billing, health) || allowed(e, "spiffe://palisade.local/svc/order", health) {
		t.Error("--trust-domain example.org is not the policy's trust domain")
	}

	for _, bad := range []string{`[1, 2]`, `null`, `{"palisade":`} {
		if _, err := start("--policy-data", dataFile(bad)); err == nil || !strings.Contains(err.Error(), "--policy-data") {
			t.Errorf("--policy-data %s: %v, want an error naming the flag", bad, err)
		}
	}
}
