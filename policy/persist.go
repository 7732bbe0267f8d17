package policy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// persistFile is the name of the persisted bundle in its directory.
const persistFile = "bundle.tar.gz"

// persist keeps raw, the archive b was read from, as the last good bundle,
// unless it is there already. A failure is logged: the policy in force is
// unaffected, only a start without the bundle server would be.
func (s *BundleSource) persist(ctx context.Context, raw []byte, b *Bundle) {
	rev := b.Revision()
	if s.cfg.persistDir == "" || raw == nil || rev == s.persistedRev {
		return
	}
	file := filepath.Join(s.cfg.persistDir, persistFile)
	if err := writeFileSynced(file, raw); err != nil {
		s.log.WarnContext(ctx, "policy bundle not persisted; a start without the bundle server would not have it", "error", err)
		return
	}
	s.persistedRev = rev
	s.log.DebugContext(ctx, "policy bundle persisted", "file", file, "revision", rev)
}

// mkdirPersist creates the persist directory, private to the service.
func mkdirPersist(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("policy: bundle persist directory: %w", err)
	}
	return nil
}

// writeFileSynced replaces file with data, mode 0600, atomically and
// durably: through a temporary file in the same directory, synced, renamed
// over file, and the directory synced, so that a crash leaves the old
// bundle or the new one, never an empty or partial file to start from.
func writeFileSynced(file string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if d, err := os.Open(filepath.Dir(file)); err == nil {
		_ = d.Sync() // best effort: not every file system syncs directories
		d.Close()
	}
	return nil
}

// persisted is a bundle read back from the persist directory.
type persisted struct {
	bundle           *Bundle
	manifestRevision string
	modTime          time.Time
}

// readPersisted reads the persisted bundle with the checks of a download:
// its size, and its signature when vc is set.
func readPersisted(dir string, vc *bundle.VerificationConfig) (*persisted, error) {
	file := filepath.Join(dir, persistFile)
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("no persisted bundle to start from: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("persisted bundle: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("persisted bundle: %w", err)
	}
	if err := checkSize(raw); err != nil {
		return nil, fmt.Errorf("persisted bundle %s: %w", file, err)
	}
	ob, err := bundle.NewCustomReader(bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(raw), file)).
		WithRegoVersion(ast.RegoV1).
		WithBundleVerificationConfig(vc).
		WithSizeLimitBytes(maxPolicyBytes).
		Read()
	if err != nil {
		return nil, fmt.Errorf("persisted bundle %s: %w", file, err)
	}
	b, err := fromOPA(&ob, file)
	if err != nil {
		return nil, fmt.Errorf("persisted bundle: %w", err)
	}
	return &persisted{bundle: b, manifestRevision: ob.Manifest.Revision, modTime: fi.ModTime()}, nil
}
