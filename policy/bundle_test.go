package policy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

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
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(archive) }))
	defer srv.Close()

	for name, load := range map[string]policy.Loader{
		"file": policy.BundleLoader(file, nil),
		"url":  policy.BundleLoader(srv.URL+"/bundle.tar.gz", srv.Client()),
	} {
		t.Run(name, func(t *testing.T) {
			b, err := load(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := b.Modules["escape.rego"]; !ok || len(b.Modules) != 3 {
				t.Fatalf("modules %v: a ../ name must be cleaned into the bundle", keys(b.Modules))
			}
			e, err := quietEngine(t, b)
			if err != nil {
				t.Fatal(err)
			}
			for user, want := range map[string]bool{"bob": true, "eve": false} {
				d, err := e.Eval(context.Background(), ast.MustParseTerm(`{"user": "`+user+`"}`).Value)
				if err != nil || d.Allow != want {
					t.Fatalf("%s: %+v %v, want allow %v (from the bundle's data.json)", user, d, err, want)
				}
			}
		})
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
