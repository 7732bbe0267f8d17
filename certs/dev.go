package certs

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/internal/pemfile"
)

// DefaultTrustDomain is the trust domain of the development PKI.
const DefaultTrustDomain = "palisade.local"

// DevIdentity is one leaf of the development PKI: the files <Name>.pem and
// <Name>-key.pem, with the SPIFFE ID spiffe://<trust domain><Path>.
type DevIdentity struct {
	Name  string
	Path  string
	Usage Usage
}

// DevIdentities returns the leaves `palisade certs init` writes beside the
// CA. Workloads get serverAuth and clientAuth (they serve, and call each other
// with the same certificate) and the SANs localhost, 127.0.0.1 and ::1.
func DevIdentities() []DevIdentity {
	return []DevIdentity{
		{Name: "usersvc", Path: "/svc/user", Usage: UsageWorkload},
		{Name: "ordersvc", Path: "/svc/order", Usage: UsageWorkload},
		{Name: "cli", Path: "/client/cli", Usage: UsageClient},
		{Name: "other", Path: "/client/other", Usage: UsageClient},
	}
}

// DevOption configures InitDev.
type DevOption interface {
	applyDev(*devConfig)
}

type devConfig struct {
	trustDomain string
	overwrite   bool
}

type devOptionFunc func(*devConfig)

func (f devOptionFunc) applyDev(c *devConfig) { f(c) }

// WithTrustDomain sets the trust domain of the development PKI (default
// DefaultTrustDomain).
func WithTrustDomain(td string) DevOption {
	return devOptionFunc(func(c *devConfig) {
		if td != "" {
			c.trustDomain = td
		}
	})
}

// WithOverwrite lets InitDev overwrite existing files. Without it InitDev
// refuses to touch a directory that already holds any of the files it
// would write.
func WithOverwrite() DevOption {
	return devOptionFunc(func(c *devConfig) { c.overwrite = true })
}

// ErrExist is returned by InitDev when files exist and WithOverwrite is not
// given.
var ErrExist = errors.New("certs: files exist (use --force to overwrite)")

// Validities of the development PKI.
const (
	devCAValidity   = 365 * 24 * time.Hour
	devLeafValidity = 90 * 24 * time.Hour
)

// InitDev writes a development CA (ca.pem, ca-key.pem, valid for a year)
// and the leaves of DevIdentities (valid for 90 days) into dir, creating it
// with mode 0700. Private keys are written with mode 0600. It returns the
// paths it wrote. When any file already exists and WithOverwrite is not
// given it writes nothing and returns an error wrapping ErrExist that names
// the files.
func InitDev(dir string, opts ...DevOption) ([]string, error) {
	cfg := devConfig{trustDomain: DefaultTrustDomain}
	for _, o := range opts {
		o.applyDev(&cfg)
	}
	td := cfg.trustDomain
	names := []string{"ca.pem", "ca-key.pem"}
	for _, id := range DevIdentities() {
		names = append(names, id.Name+".pem", id.Name+"-key.pem")
	}
	if !cfg.overwrite {
		var existing []string
		for _, n := range names {
			if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
				existing = append(existing, filepath.Join(dir, n))
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("certs: %w", err)
			}
		}
		if len(existing) > 0 {
			return nil, fmt.Errorf("%w: %v", ErrExist, existing)
		}
	}

	ca, err := NewCA(td, devCAValidity)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"ca.pem": ca.CertPEM()}
	if files["ca-key.pem"], err = ca.KeyPEM(); err != nil {
		return nil, err
	}
	for _, id := range DevIdentities() {
		leaf := Leaf{SPIFFEID: "spiffe://" + td + id.Path, Usage: id.Usage, Validity: devLeafValidity}
		if id.Usage != UsageClient {
			leaf.DNSNames = []string{"localhost"}
			leaf.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		}
		issued, err := ca.Issue(leaf)
		if err != nil {
			return nil, fmt.Errorf("certs: issue %s: %w", id.Name, err)
		}
		files[id.Name+".pem"] = issued.CertPEM()
		if files[id.Name+"-key.pem"], err = issued.KeyPEM(); err != nil {
			return nil, err
		}
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	var written []string
	for _, n := range names {
		mode := fs.FileMode(0o644)
		if strings.HasSuffix(n, "-key.pem") {
			mode = 0o600
		}
		path := filepath.Join(dir, n)
		if err := pemfile.WriteFileAtomic(path, files[n], mode); err != nil {
			return written, err
		}
		written = append(written, path)
	}
	return written, nil
}
