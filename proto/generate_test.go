// Package proto_test checks that the Go generated from the .proto files in
// this directory is current.
package proto_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// checkGenerated runs scripts/check-generated.sh on root.
func checkGenerated(t *testing.T, root string) (string, error) {
	t.Helper()
	script, err := filepath.Abs("../scripts/check-generated.sh")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", script, root).CombinedOutput()
	return string(out), err
}

func TestGeneratedCodeIsCurrent(t *testing.T) {
	t.Parallel()
	if out, err := checkGenerated(t, ".."); err != nil {
		t.Fatalf("generated code is stale: %v\n%s", err, out)
	}
}

// copyTree copies what generation needs (and dirs) into a temporary root,
// checks that the copy is current, and returns the root.
func copyTree(t *testing.T, dirs ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, dir := range append([]string{"proto", "tools"}, dirs...) {
		if err := os.CopyFS(filepath.Join(root, dir), os.DirFS(filepath.Join("..", dir))); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"buf.yaml", "buf.gen.yaml", "go.mod"} {
		data, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := checkGenerated(t, root); err != nil {
		t.Fatalf("copy should be current: %v\n%s", err, out)
	}
	return root
}

// TestStaleGeneratedCodeFails changes a .proto in a copy of the tree and
// checks that the check notices.
func TestStaleGeneratedCodeFails(t *testing.T) {
	t.Parallel()
	root := copyTree(t)
	path := filepath.Join(root, "proto", "user", "v1", "user.proto")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(src), "message GetUserRequest {\n  string id = 1;\n", "message GetUserRequest {\n  string id = 1;\n  string added = 2;\n", 1)
	if changed == string(src) {
		t.Fatal("test could not change user.proto")
	}
	if err := os.WriteFile(path, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := checkGenerated(t, root)
	if err == nil {
		t.Fatalf("check passed after a .proto change:\n%s", out)
	}
	if !strings.Contains(out, "user.pb.go") || !strings.Contains(out, "stale") {
		t.Fatalf("check output does not name the stale file:\n%s", out)
	}
}

// TestStaleConformanceCodeFails: the check covers the conformance suite's
// protos (conformance/buf.yaml) too.
func TestStaleConformanceCodeFails(t *testing.T) {
	t.Parallel()
	root := copyTree(t, "conformance")
	path := filepath.Join(root, "conformance", "proto", "connectrpc", "conformance", "v1", "service.proto")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(src, "\nmessage Added {}\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := checkGenerated(t, root); err == nil || !strings.Contains(out, "service.pb.go") || !strings.Contains(out, "conformance/gen is stale") {
		t.Fatalf("check after a conformance .proto change: %v\n%s", err, out)
	}
}
