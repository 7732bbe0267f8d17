package policy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
)

func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const dataPolicy = `package palisade.authz
default allow := false
allow if input.user in data.palisade.allowed
decision := {"allow": allow, "reasons": []}
`

func TestBundleFromFileAndURL(t *testing.T) {
	t.Parallel()
	archive := tarGz(t, map[string]string{
		".manifest":                  `{"revision": "r1"}`,
		"palisade/authz.rego":        dataPolicy,
		"palisade/authz_test.rego":   "package palisade.authz_test\ntest_bob if data.palisade.authz.decision.allow with input as {\"user\": \"bob\"}\n",
		"palisade/allowed/data.json": `["bob"]`,
		"../../escape.rego":          "package escape\nx := 1\n",
	})
	file := filepath.Join(t.TempDir(), "bundle.tar.gz")
	if err := os.WriteFile(file, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := policy.BundleLoader(file)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Modules["escape.rego"]; !ok || len(b.Modules) != 3 {
		t.Fatalf("modules %v: a ../ name must be cleaned into the bundle", keys(b.Modules))
	}
	fromFile, err := quietEngine(t, b)
	if err != nil {
		t.Fatal(err)
	}

	// The same archive from a bundle server (OPA's downloader, over mTLS)
	// is the same policy: the same revision, over the same modules and data.
	ca := certstest.NewCA(t)
	srv := startBundleServer(t, ca, nil)
	srv.publish(archive)
	src, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	fromURL, err := src.NewEngine(context.Background(), policy.WithoutBase()) // as quietEngine: the fixture is a whole policy
	if err != nil {
		t.Fatal(err)
	}
	if fromURL.Revision() != fromFile.Revision() {
		t.Fatalf("revision %s from the server, %s from the file", fromURL.Revision(), fromFile.Revision())
	}
	for name, e := range map[string]*policy.Engine{"file": fromFile, "url": fromURL} {
		for user, want := range map[string]bool{"bob": true, "eve": false} {
			d, err := e.Eval(context.Background(), ast.MustParseTerm(`{"user": "`+user+`"}`).Value)
			if err != nil || d.Allow != want {
				t.Fatalf("%s, %s: %+v %v, want allow %v (from the bundle's data.json)", name, user, d, err, want)
			}
		}
	}
	if _, err := policy.ReadBundle(strings.NewReader("not gzip"), "junk"); err == nil {
		t.Fatal("junk accepted as a bundle")
	}
	if _, err := policy.ReadBundle(bytes.NewReader(tarGz(t, map[string]string{"data.json": "{}"})), "empty"); err == nil {
		t.Fatal("a bundle without rego accepted")
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestLoadDirReadsOneVersion swaps a policy directory while it is being
// read, the two ways tools publish a new version atomically: a symlink to
// the directory renamed over the old one, and Kubernetes' ConfigMap volume
// (a "..data" symlink inside the directory, each file a symlink through it).
// Every load must see one whole version, never files of two: a mix could
// pass its tests and be swapped in although neither version was meant.
func TestLoadDirReadsOneVersion(t *testing.T) {
	versions := []map[string]string{
		{"authz.rego": "package palisade.authz\n# A\n", "authz_test.rego": "package palisade.authz_test\n# A\n"},
		{"authz.rego": "package palisade.authz\n# B\n"},
	}
	revisions := map[string]int{}
	for i, files := range versions {
		revisions[(&policy.Bundle{Modules: files}).Revision()] = i
	}
	point := func(t *testing.T, link, target string) { // called off the test goroutine: no Fatal
		if err := relink(target, link); err != nil {
			t.Error(err)
		}
	}
	layouts := []struct {
		name string
		// setup lays out version 0 and returns the directory to load and
		// a function that publishes version i.
		setup func(t *testing.T, root string) (string, func(i int))
	}{
		{"symlinked directory", func(t *testing.T, root string) (string, func(int)) {
			for i, files := range versions {
				writeDir(t, filepath.Join(root, fmt.Sprint("v", i)), files)
			}
			link := filepath.Join(root, "current")
			publish := func(i int) { point(t, link, filepath.Join(root, fmt.Sprint("v", i))) }
			publish(0)
			return link, publish
		}},
		{"kubernetes configmap", func(t *testing.T, root string) (string, func(int)) {
			for i, files := range versions {
				writeDir(t, filepath.Join(root, fmt.Sprint("..v", i)), files)
			}
			// The file links of every name any version has, as kubelet
			// leaves them between updates.
			for _, name := range []string{"authz.rego", "authz_test.rego"} {
				if err := os.Symlink(filepath.Join("..data", name), filepath.Join(root, name)); err != nil {
					t.Fatal(err)
				}
			}
			link := filepath.Join(root, "..data")
			publish := func(i int) { point(t, link, fmt.Sprint("..v", i)) }
			publish(0)
			return root, publish
		}},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			dir, publish := l.setup(t, t.TempDir())
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for i := 1; i <= 2000; i++ {
					select {
					case <-stop:
						return
					default:
						publish(i % 2)
					}
				}
			}()
			defer func() { close(stop); <-done }() // no swap outlives the test
			loads, seen := 0, map[int]int{}
			for finished := false; !finished; loads++ {
				select {
				case <-done:
					finished = true
				default:
				}
				b, err := policy.LoadDir(dir)
				if err != nil {
					t.Fatalf("load %d: %v", loads, err)
				}
				v, ok := revisions[b.Revision()]
				if !ok {
					t.Fatalf("load %d read a mix of versions: %v", loads, b.Modules)
				}
				seen[v]++
			}
			t.Logf("%d loads during 2000 swaps: %d of version A, %d of version B", loads, seen[0], seen[1])
		})
	}
}
