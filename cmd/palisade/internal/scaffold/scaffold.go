// Package scaffold writes a new service's module: what `palisade new
// service` does.
package scaffold

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"unicode"
)

//go:embed all:template
var templates embed.FS

// files holds copies of files of the Palisade repository that a new module
// needs as they are (TestCopies keeps them equal): protovalidate's
// validate.proto and the pinned generator tools.
//
//go:embed files
var files embed.FS

// Spec is what to write.
type Spec struct {
	// Name is the service's name: lower-case letters and digits, starting
	// with a letter ("inventory"). The proto package is <Name>.v1, the
	// service <Name>Service, the workload spiffe://<TrustDomain>/svc/<Name>.
	Name string
	// Module is the new Go module's path ("example.com/inventory").
	Module string
	// Dir is where to write it: absent or empty.
	Dir string
	// Palisade is the path of a Palisade checkout the module builds
	// against (a replace directive). Required while Palisade is
	// unpublished; once it is, an empty Palisade will mean a released
	// version.
	Palisade string
	// TrustDomain is the SPIFFE trust domain of the service's workload ID.
	TrustDomain string
}

var (
	nameRE   = regexp.MustCompile(`^[a-z][a-z0-9]{0,30}$`)
	moduleRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*(/[A-Za-z0-9._~-]+)+$|^[a-z][a-z0-9_-]*$`)
)

// reserved are names the generated code could not use as a Go package
// name or that would collide with its imports.
var reserved = map[string]bool{"main": true, "policy": true, "gen": true, "kit": true, "rpc": true, "security": true, "connect": true, "user": true, "internal": true}

func (s Spec) check() error {
	if !nameRE.MatchString(s.Name) || reserved[s.Name] {
		return fmt.Errorf("service name %q: want lower-case letters and digits, starting with a letter, at most 31 (and not %s)", s.Name, strings.Join(sortedKeys(reserved), ", "))
	}
	if !moduleRE.MatchString(s.Module) {
		return fmt.Errorf("module path %q is not a Go module path (example.com/%s)", s.Module, s.Name)
	}
	if s.Dir == "" {
		return errors.New("no directory to write to")
	}
	if s.Palisade == "" {
		// Until Palisade is published there is no version to require.
		return errors.New("no Palisade checkout to build against (--palisade PATH): Palisade is not published yet")
	}
	if s.TrustDomain == "" || strings.ContainsAny(s.TrustDomain, "/:@ ") {
		return fmt.Errorf("trust domain %q is not a SPIFFE trust domain name", s.TrustDomain)
	}
	return nil
}

// Write writes the module's source files into s.Dir, which must be absent
// or empty; it generates no code (see Generate).
func Write(s Spec) error {
	if err := s.check(); err != nil {
		return err
	}
	if entries, err := os.ReadDir(s.Dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty: palisade new writes into an empty directory only", s.Dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	data, err := s.data()
	if err != nil {
		return err
	}
	err = fs.WalkDir(templates, "template", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := templates.ReadFile(p)
		if err != nil {
			return err
		}
		t, err := template.New(p).Option("missingkey=error").Parse(string(src))
		if err != nil {
			return fmt.Errorf("template %s: %w", p, err)
		}
		var out bytes.Buffer
		if err := t.Execute(&out, data); err != nil {
			return fmt.Errorf("template %s: %w", p, err)
		}
		return writeFile(s.Dir, outPath(p, s.Name), out.Bytes())
	})
	if err != nil {
		return err
	}
	for src, dst := range map[string]string{
		"files/validate.proto": "third_party/protovalidate/buf/validate/validate.proto",
		"files/tools.go.sum":   "tools/go.sum",
	} {
		b, err := files.ReadFile(src)
		if err != nil {
			return err
		}
		if err := writeFile(s.Dir, dst, b); err != nil {
			return err
		}
	}
	mod, err := files.ReadFile("files/tools.go.mod")
	if err != nil {
		return err
	}
	mod, err = retitle(mod, s.Module+"/tools")
	if err != nil {
		return err
	}
	return writeFile(s.Dir, "tools/go.mod", mod)
}

// Generate runs, in the written module, what makes it build: buf's code
// generation, then go mod tidy. Output goes to stdout and stderr.
func Generate(dir string, stdout, stderr *os.File) error {
	steps := [][]string{
		{"go", "tool", "-modfile=tools/go.mod", "buf", "generate"},
		{"go", "mod", "tidy"},
	}
	for _, step := range steps {
		cmd := exec.Command(step[0], step[1:]...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = dir, stdout, stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s (in %s): %w", strings.Join(step, " "), dir, err)
		}
	}
	return nil
}

// outPath maps a template's path to the file it writes: without the
// "template/" prefix and ".tmpl" suffix, with NAME replaced by the
// service's name, and gitignore as .gitignore.
func outPath(p, name string) string {
	p = strings.TrimSuffix(strings.TrimPrefix(p, "template/"), ".tmpl")
	p = strings.ReplaceAll(p, "NAME", name)
	if path.Base(p) == "gitignore" {
		p = path.Join(path.Dir(p), ".gitignore")
	}
	return p
}

func writeFile(dir, rel string, b []byte) error {
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o644)
}

// retitle replaces the module line of a go.mod.
func retitle(mod []byte, module string) ([]byte, error) {
	lines := strings.SplitAfter(string(mod), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "module ") {
			lines[i] = "module " + module + "\n"
			return []byte(strings.Join(lines, "")), nil
		}
	}
	return nil, errors.New("tools go.mod has no module line")
}

type data struct {
	Spec
	Service         string
	GoVersion       string
	PalisadeVersion string
	Replace         string
}

func (s Spec) data() (data, error) {
	d := data{Spec: s, Service: string(unicode.ToUpper(rune(s.Name[0]))) + s.Name[1:] + "Service"}
	tools, err := files.ReadFile("files/tools.go.mod")
	if err != nil {
		return d, err
	}
	for _, l := range strings.Split(string(tools), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			d.GoVersion = strings.TrimSpace(v)
		}
	}
	if d.GoVersion == "" {
		return d, errors.New("tools go.mod has no go line")
	}
	d.PalisadeVersion = "v0.0.0-00010101000000-000000000000"
	if s.Palisade != "" {
		abs, err := filepath.Abs(s.Palisade)
		if err != nil {
			return d, err
		}
		if _, err := os.Stat(filepath.Join(abs, "go.mod")); err != nil {
			return d, fmt.Errorf("--palisade %s: not a Palisade checkout (no go.mod)", s.Palisade)
		}
		d.Replace = filepath.ToSlash(abs)
	}
	return d, nil
}

func sortedKeys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
