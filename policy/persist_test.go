package policy_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// closedURL returns a bundle URL on 127.0.0.1 where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr + "/bundles/authz.tar.gz"
}

// TestBundlePersistedForStart: a source with a persist directory keeps
// there, byte for byte, the last bundle that passed the gate. A service
// started while its bundle server is down (refusing connections, answering
// 503, or an impostor with a certificate of another CA), or serving a
// bundle that fails the gate, starts from that bundle — verified against
// the signing key and tested again — and logs it; once the server serves
// again, its new bundle is swapped in. Without a persisted bundle the start
// fails, saying why.
func TestBundlePersistedForStart(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	key := newBundleKey(t, "release")
	srv := startBundleServer(t, ca, nil)
	dir := filepath.Join(t.TempDir(), "persist")
	opts := func(logs ...policy.BundleOption) []policy.BundleOption {
		return append([]policy.BundleOption{policy.WithPersistDir(dir), policy.WithSigningKey("release", "", key.public),
			policy.WithTestPollingDelay(0, time.Second)}, logs...)
	}
	v1 := opaBundle(t, "v1", alicePolicy, key, nil)
	srv.publish(v1)

	logger, _ := rpctest.NewLogger(t)
	first, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), opts(policy.WithLogger(logger))...)
	if err != nil {
		t.Fatal(err)
	}
	seen := observe(first)
	e, err := first.NewEngine(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "bundle.tar.gz")
	checkPersisted := func(want []byte, version string) {
		t.Helper()
		got, err := os.ReadFile(file)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("persisted %d bytes (%v), want %s's %d bytes as served", len(got), err, version, len(want))
		}
		fi, err := os.Stat(file)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("persisted file mode %v (%v), want 0600", fi.Mode(), err)
		}
		di, err := os.Stat(dir)
		if err != nil || di.Mode().Perm() != 0o700 {
			t.Fatalf("persist directory mode %v (%v), want 0700", di.Mode(), err)
		}
	}
	checkPersisted(v1, "v1")
	stop := runSource(t, first)
	v2files := map[string]string{"authz.rego": alicePolicy["authz.rego"] + "# v2\n", "authz_test.rego": alicePolicy["authz_test.rego"]}
	v2 := opaBundle(t, "v2", v2files, key, nil)
	srv.publish(v2)
	seen.waitFor(t, 0, "loaded", 1)
	checkPersisted(v2, "v2")
	// A bundle refused is never persisted.
	mark := seen.mark()
	srv.publish(opaBundle(t, "v3", versionFiles("failing", true, "[]", "false"), key, nil))
	seen.waitFor(t, mark, "refused", 1)
	mark = seen.mark()
	srv.publish(opaBundle(t, "v3", bobOpened(), nil, nil))
	seen.waitFor(t, mark, "unreadable", 1)
	stop()
	checkPersisted(v2, "v2")
	lastGood := e.Revision()

	impostor := startBundleServer(t, certstest.NewCA(t), nil)
	impostor.publish(opaBundle(t, "evil", bobOpened(), key, nil))
	failing := startBundleServer(t, ca, nil)
	failing.publish(opaBundle(t, "v4", versionFiles("failing", true, "[]", "false"), key, nil))
	for name, c := range map[string]struct {
		url    string
		down   func()
		logged string
	}{
		"connection refused": {url: closedURL(t), logged: "connection refused"},
		"503":                {url: srv.url, down: func() { srv.fail(http.StatusServiceUnavailable) }, logged: "Service Unavailable"},
		"impostor":           {url: impostor.url, logged: "certificate signed by unknown authority"},
		"bundle refused":     {url: failing.url, logged: "rego tests failed"},
	} {
		t.Run(name, func(t *testing.T) {
			if c.down != nil {
				c.down()
			}
			logger, logs := rpctest.NewLogger(t)
			src, err := policy.NewBundleSource(c.url, bundleClient(t, ca), opts(policy.WithLogger(logger))...)
			if err != nil {
				t.Fatal(err)
			}
			e, err := src.NewEngine(context.Background())
			if err != nil {
				t.Fatalf("no start from the persisted bundle: %v", err)
			}
			if e.Revision() != lastGood {
				t.Fatalf("started with %s, want the persisted %s", e.Revision(), lastGood)
			}
			if decides(t, e, `{"request": {"id": "bob"}}`) {
				t.Fatal("bob's record open: not the persisted policy")
			}
			logs.WaitForLog(t, "level=WARN", "deciding with the persisted bundle", "revision="+lastGood, "bundle_revision=v2", "age=", c.logged)
			if impostor.full.Load()+impostor.notModified.Load() != 0 {
				t.Fatal("the impostor was asked for its bundle: the handshake should have refused it")
			}
		})
	}

	// A server down at start that serves again: its bundle replaces the
	// persisted one.
	logger, logs := rpctest.NewLogger(t)
	down := startBundleServer(t, ca, nil)
	down.fail(http.StatusServiceUnavailable)
	down.publish(opaBundle(t, "v5", map[string]string{"authz.rego": alicePolicy["authz.rego"] + "# v5\n", "authz_test.rego": alicePolicy["authz_test.rego"]}, key, nil))
	src, err := policy.NewBundleSource(down.url, bundleClient(t, ca), opts(policy.WithLogger(logger))...)
	if err != nil {
		t.Fatal(err)
	}
	seen = observe(src)
	e, err = src.NewEngine(context.Background())
	if err != nil || e.Revision() != lastGood {
		t.Fatalf("start from the persisted bundle: %v", err)
	}
	runSource(t, src)
	mark = seen.waitFor(t, 0, "unreachable", 1)
	down.fail(0)
	seen.waitFor(t, mark, "loaded", 1)
	logs.WaitForLog(t, "level=INFO", "policy bundle fetched again", "after=unreachable")
	if e.Revision() == lastGood {
		t.Fatal("v5 not swapped in")
	}

	// Nothing persisted: the start fails and says why.
	for name, extra := range map[string][]policy.BundleOption{
		"empty directory":      {policy.WithPersistDir(t.TempDir())},
		"no persist directory": nil,
	} {
		src, err := policy.NewBundleSource(closedURL(t), bundleClient(t, ca), append(extra, policy.WithLogger(logger))...)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"empty directory": "no persisted bundle to start from", "no persist directory": "no persist directory to start from"}[name]
		if _, err := src.NewEngine(context.Background()); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("%s: %v, want an error saying the server is down and %q", name, err, want)
		}
	}
}

// TestPersistedBundleRefusedAtStart: a persisted bundle passes the same
// checks as a downloaded one before the service starts with it: its
// signature (changed on disk, unsigned), its size, and its tests.
func TestPersistedBundleRefusedAtStart(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	key := newBundleKey(t, "release")
	signing := policy.WithSigningKey("release", "", key.public)
	for name, c := range map[string]struct {
		archive []byte
		signed  bool
		want    string
		is      error
	}{
		"its tests fail":     {archive: opaBundle(t, "bad", versionFiles("bad", true, "[]", "false"), nil, nil), want: "rego tests failed"},
		"it has no tests":    {archive: opaBundle(t, "untested", map[string]string{"authz.rego": alicePolicy["authz.rego"]}, nil, nil), is: policy.ErrUntested},
		"changed on disk":    {archive: opaBundle(t, "v1", alicePolicy, key, withModule("authz.rego", bobOpened()["authz.rego"])), signed: true, want: "digest mismatch"},
		"unsigned":           {archive: opaBundle(t, "v1", bobOpened(), nil, nil), signed: true, want: "bundle missing .signatures.json file"},
		"unpacks to 64 MiB":  {archive: bomb(t, 8, 8<<20), want: "larger than 8388608 bytes unpacked"},
		"not a bundle":       {archive: []byte("this is not a gzip archive"), want: "gzip: invalid header"},
		"signed, no key set": {archive: opaBundle(t, "v1", alicePolicy, key, nil), want: "verification key not provided"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "bundle.tar.gz"), c.archive, 0o600); err != nil {
				t.Fatal(err)
			}
			opts := []policy.BundleOption{policy.WithPersistDir(dir), policy.WithLogger(discard)}
			if c.signed {
				opts = append(opts, signing)
			}
			src, err := policy.NewBundleSource(closedURL(t), bundleClient(t, ca), opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = src.NewEngine(context.Background())
			if err == nil {
				t.Fatal("started from a persisted bundle that should be refused")
			}
			if c.is != nil && !errors.Is(err, c.is) || c.want != "" && !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want an error saying %q", err, c.want+errString(c.is))
			}
			if !strings.Contains(err.Error(), "connection refused") {
				t.Fatalf("%v: the error should say why the server was not used", err)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
