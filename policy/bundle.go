package policy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Query is the document every Palisade policy defines: a decision
// {"allow": bool, "reasons": [string, ...]}.
const Query = "data.palisade.authz.decision"

// Bundle is a set of policy sources: rego modules (including their
// *_test.rego tests) and an optional data document.
type Bundle struct {
	// Modules maps a file name to rego source.
	Modules map[string]string
	// Data is the base document under data (from data.json), or nil.
	Data map[string]any
	// Origin says where the bundle came from, for logs ("embedded", a path, a URL).
	Origin string
}

// Revision identifies the bundle's content: a short SHA-256 over its files.
func (b *Bundle) Revision() string {
	h := sha256.New()
	names := make([]string, 0, len(b.Modules))
	for n := range b.Modules {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00%s", n, len(b.Modules[n]), b.Modules[n])
	}
	if b.Data != nil {
		data, _ := json.Marshal(b.Data) // maps marshal with sorted keys
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// IsTestFile reports whether name is a rego test file.
func IsTestFile(name string) bool { return strings.HasSuffix(name, "_test.rego") }

// maxPolicyBytes bounds what one bundle may hold, so a bad directory or
// download cannot exhaust memory.
const maxPolicyBytes = 8 << 20

// LoadFS reads a policy layer from fsys as LoadDir does a directory: every
// *.rego file (recursively) and data.json if present, skipping entries whose
// names begin with ".". It is how a service reads the layer it embeds
// (//go:embed); origin names it in logs.
func LoadFS(fsys fs.FS, origin string) (*Bundle, error) {
	b, err := loadFS(fsys)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, origin)
	}
	b.Origin = origin
	return b, nil
}

// LoadDir reads every *.rego file under dir (recursively) and dir/data.json
// if present, all from one version of the directory. A version published
// atomically by renaming a symlink is never read half old, half new: when
// dir is a symlink, or holds the "..data" symlink of a Kubernetes ConfigMap
// volume, the link is resolved once and every file is read from its target.
// Entries whose names begin with "." are skipped (editor files, the
// ConfigMap's "..<timestamp>" directories).
func LoadDir(dir string) (*Bundle, error) {
	root, err := versionDir(dir)
	if err != nil {
		return nil, fmt.Errorf("policy: load: %w", err)
	}
	b, err := loadFS(os.DirFS(root))
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, dir)
	}
	b.Origin = dir
	return b, nil
}

// versionDir resolves dir to the directory that holds its current version.
func versionDir(dir string) (string, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	data := filepath.Join(root, "..data")
	if fi, err := os.Lstat(data); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return filepath.EvalSymlinks(data)
	}
	return root, nil
}

func loadFS(fsys fs.FS) (*Bundle, error) {
	b := &Bundle{Modules: map[string]string{}}
	total := 0
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		isRego := strings.HasSuffix(p, ".rego")
		if !isRego && p != "data.json" {
			return nil
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		if total += len(data); total > maxPolicyBytes {
			return fmt.Errorf("policies larger than %d bytes", maxPolicyBytes)
		}
		if isRego {
			b.Modules[p] = string(data)
			return nil
		}
		return json.Unmarshal(data, &b.Data)
	})
	if err != nil {
		return nil, fmt.Errorf("policy: load: %w", err)
	}
	if len(b.Modules) == 0 {
		return nil, errors.New("policy: load: no .rego files")
	}
	return b, nil
}

// ReadBundle reads an OPA bundle (a gzipped tar of .rego files and
// data.json files; .manifest and other files are ignored). data.json files
// are placed at the path of their directory.
func ReadBundle(r io.Reader, origin string) (*Bundle, error) {
	gz, err := gzip.NewReader(io.LimitReader(r, maxPolicyBytes))
	if err != nil {
		return nil, fmt.Errorf("policy: bundle %s: %w", origin, err)
	}
	defer gz.Close()
	tr := tar.NewReader(io.LimitReader(gz, maxPolicyBytes))
	b := &Bundle{Modules: map[string]string{}, Origin: origin}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("policy: bundle %s: %w", origin, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean("/" + hdr.Name)[1:]
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, tr); err != nil {
			return nil, fmt.Errorf("policy: bundle %s: %w", origin, err)
		}
		switch {
		case strings.HasSuffix(name, ".rego"):
			b.Modules[name] = buf.String()
		case path.Base(name) == "data.json":
			var doc any
			if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
				return nil, fmt.Errorf("policy: bundle %s: %s: %w", origin, name, err)
			}
			if err := b.putData(path.Dir(name), doc); err != nil {
				return nil, fmt.Errorf("policy: bundle %s: %w", origin, err)
			}
		}
	}
	if len(b.Modules) == 0 {
		return nil, fmt.Errorf("policy: bundle %s: no .rego files", origin)
	}
	return b, nil
}

// ReadBundleFile reads an OPA bundle from a file.
func ReadBundleFile(file string) (*Bundle, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	return ReadBundle(f, file)
}

// putData places doc at the slash-separated dir under b.Data.
func (b *Bundle) putData(dir string, doc any) error {
	if b.Data == nil {
		b.Data = map[string]any{}
	}
	if dir == "." || dir == "" {
		obj, ok := doc.(map[string]any)
		if !ok {
			return errors.New("root data.json is not an object")
		}
		for k, v := range obj {
			b.Data[k] = v
		}
		return nil
	}
	node := b.Data
	parts := strings.Split(filepath.ToSlash(dir), "/")
	for _, p := range parts[:len(parts)-1] {
		next, ok := node[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			node[p] = next
		}
		node = next
	}
	node[parts[len(parts)-1]] = doc
	return nil
}
