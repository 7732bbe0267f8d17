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
	for _, dir := range append([]string{"proto", "tools", "third_party"}, dirs...) {
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

// TestStaleGeneratedCodeFails changes a .proto in a copy of the tree, then
// the printed validate.proto, and checks that the check notices each.
func TestStaleGeneratedCodeFails(t *testing.T) {
	t.Parallel()
	root := copyTree(t)
	path := filepath.Join(root, "proto", "user", "v1", "user.proto")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(src), "message GetUserRequest {\n", "message GetUserRequest {\n  string added = 2;\n", 1)
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

	// A hand-edited (or outdated) validate.proto is noticed too.
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	validate := filepath.Join(root, "third_party", "protovalidate", "buf", "validate", "validate.proto")
	vsrc, err := os.ReadFile(validate)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(validate, append(vsrc, "// edited\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = checkGenerated(t, root)
	if err == nil || !strings.Contains(out, "third_party/protovalidate is stale") {
		t.Fatalf("check passed after validate.proto changed (%v):\n%s", err, out)
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

// TestValidateProtoIsTheRuntimes checks that buf/validate/validate.proto,
// which the protos are compiled against, was printed from the same version
// of the protovalidate Go module that the services validate with (go.mod),
// and that tools/go.mod — which prints it — pins that version too.
func TestValidateProtoIsTheRuntimes(t *testing.T) {
	t.Parallel()
	const mod = "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go"
	version := func(file string) string {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == mod {
				return f[1]
			}
		}
		t.Fatalf("%s does not require %s", file, mod)
		return ""
	}
	runtime, tools := version("../go.mod"), version("../tools/go.mod")
	if runtime != tools {
		t.Fatalf("go.mod has %s@%s, tools/go.mod %s: pin the same version in both", mod, runtime, tools)
	}
	src, err := os.ReadFile("../third_party/protovalidate/buf/validate/validate.proto")
	if err != nil {
		t.Fatal(err)
	}
	header, _, _ := strings.Cut(string(src), "\n")
	if want := mod + "@" + runtime + "."; !strings.Contains(header, want) {
		t.Fatalf("validate.proto header %q does not name %s", header, want)
	}
}
