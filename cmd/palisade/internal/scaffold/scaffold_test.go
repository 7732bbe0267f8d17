package scaffold

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCopies keeps the files copied from the repository equal to their
// originals, so a new module gets the validate.proto and tool versions
// this checkout generates with.
func TestCopies(t *testing.T) {
	root := filepath.Join("..", "..", "..", "..")
	for copied, orig := range map[string]string{
		"files/validate.proto": "third_party/protovalidate/buf/validate/validate.proto",
		"files/tools.go.mod":   "tools/go.mod",
		"files/tools.go.sum":   "tools/go.sum",
	} {
		a, err := os.ReadFile(copied)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(root, orig))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("cmd/palisade/internal/scaffold/%s differs from %s: copy it again (cp %s cmd/palisade/internal/scaffold/%s)", copied, orig, orig, copied)
		}
	}
}

func TestWriteRefuses(t *testing.T) {
	good := Spec{Name: "inventory", Module: "example.com/inventory", Dir: t.TempDir(), Palisade: filepath.Join("..", "..", "..", ".."), TrustDomain: "palisade.local"}
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"upper-case name", func(s *Spec) { s.Name = "Inventory" }, "service name"},
		{"name with a dash", func(s *Spec) { s.Name = "in-ventory" }, "service name"},
		{"reserved name", func(s *Spec) { s.Name = "policy" }, "service name"},
		{"bad module", func(s *Spec) { s.Module = "Example.com/ x" }, "module path"},
		{"no checkout", func(s *Spec) { s.Palisade = "" }, "--palisade"},
		{"not a checkout", func(s *Spec) { s.Palisade = t.TempDir() }, "not a Palisade checkout"},
		{"directory not empty", func(s *Spec) { s.Dir = full }, "not empty"},
		{"bad trust domain", func(s *Spec) { s.TrustDomain = "a/b" }, "trust domain"},
	} {
		s := good
		c.edit(&s)
		err := Write(s)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", c.name, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(good.Dir); len(entries) != 0 {
		t.Errorf("a refused spec wrote %d entries", len(entries))
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	s := Spec{Name: "inventory", Module: "example.com/inventory", Dir: dir, Palisade: filepath.Join("..", "..", "..", ".."), TrustDomain: "palisade.local"}
	if err := Write(s); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"go.mod", "tools/go.mod", "tools/go.sum", "buf.yaml", "buf.gen.yaml", "Makefile", "README.md", ".gitignore", "main.go", "doc.go",
		"proto/inventory/v1/inventory.proto", "third_party/protovalidate/buf/validate/validate.proto",
		"internal/inventory/inventory.go", "policy/policy.go", "policy/inventory.rego", "policy/inventory_test.rego", "policy/data.json", "policy/policy_test.go"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if strings.HasPrefix(f, "third_party/") || strings.HasPrefix(f, "tools/") {
			continue // copied as they are
		}
		if bytes.Contains(b, []byte("{{")) || bytes.Contains(b, []byte("NAME")) {
			t.Errorf("%s holds an unexpanded template", f)
		}
	}
	main, _ := os.ReadFile(filepath.Join(dir, "main.go"))
	if n := bytes.Count(main, []byte("\n")); n > 20 {
		t.Errorf("main.go has %d lines, want at most 20", n)
	}
	mod, _ := os.ReadFile(filepath.Join(dir, "tools/go.mod"))
	if !bytes.HasPrefix(mod, []byte("module example.com/inventory/tools\n")) {
		t.Errorf("tools/go.mod starts %q", mod[:40])
	}
}
