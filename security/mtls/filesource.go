package mtls

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/security/spiffeid"

	"github.com/palisade-rpc/palisade/internal/poll"
)

// FileSource is a Source read from PEM files: a certificate chain, its private
// key and a CA bundle, and optionally a certificate revocation list
// (WithCRL). Watch polls the files and swaps in changed material once it has
// been validated in full; Reload does it once. Material that fails
// validation is refused and logged, and the last good material keeps
// serving.
//
// The identity is fixed: the SPIFFE ID of the certificate the source starts
// with. A later certificate for another identity is refused. So are its
// uses: every certificate must be a workload certificate (basic constraints
// present with CA:FALSE) whose extended key usage names clientAuth or
// serverAuth (a service, which serves and calls, has both); a later one
// must name every one of those the first named.
type FileSource struct {
	certFile, keyFile, caFile, crlFile string
	log                                *slog.Logger

	id      spiffeid.ID
	usages  []x509.ExtKeyUsage // clientAuth, serverAuth: those of the first certificate
	current atomic.Pointer[material]
	crl     atomic.Pointer[revocations]

	mu sync.Mutex // serializes reloads; guards the refusals
	// The last refusal logged, of the certificate files and of the CRL, so
	// that a bad file is logged once, not on every poll.
	certRefusal, crlRefusal string

	changedMu  sync.Mutex
	crlChanged chan struct{} // closed, and replaced, when a new CRL takes effect
}

type material struct {
	cert   *tls.Certificate // Leaf set
	cas    []*x509.Certificate
	bundle *x509.CertPool
	digest [32]byte // of the certificate, key and CA files' contents
	// bundleDigest is of the CA file alone: a CRL is checked again when the
	// bundle changes, not when only the certificate does.
	bundleDigest [32]byte
}

// revocations are the serial numbers a CRL file revokes, by the raw subject
// of the CA that signed each CRL.
type revocations struct {
	byIssuer map[string]map[string]bool
	count    int
	digest   [32]byte // of the CRL file and the bundle it was checked against
	// nextUpdate is the earliest NextUpdate of the CRLs (zero: none says).
	// Past it the CRL stays in force — revocations do not expire — and a
	// warning is logged once (staleLogged, guarded by FileSource.mu).
	nextUpdate  time.Time
	staleLogged bool
}

// FileSourceOption configures NewFileSource.
type FileSourceOption interface {
	applyFileSource(*FileSource)
}

type fileSourceOptionFunc func(*FileSource)

func (f fileSourceOptionFunc) applyFileSource(s *FileSource) { f(s) }

// WithLogger sets the logger of a source (default slog.Default()), which
// records reloads and refused material. Log lines name files and reasons,
// never key material.
func WithLogger(l *slog.Logger) FileSourceOption {
	return fileSourceOptionFunc(func(s *FileSource) {
		if l != nil {
			s.log = l
		}
	})
}

// WithCRL makes the source read a certificate revocation list from file
// (PEM "X509 CRL" blocks, or one DER CRL). Every CRL in it must be signed by
// a CA of the trust bundle. Handshakes through ServerConfig and ClientConfig
// refuse a peer whose certificate, or any certificate of its verified chain,
// is listed (see RevocationChecker). The file is reloaded like the others;
// a CRL that does not verify is refused and the last good one stays in force.
func WithCRL(file string) FileSourceOption {
	return fileSourceOptionFunc(func(s *FileSource) { s.crlFile = file })
}

// NewFileSource reads certFile, keyFile and caFile (and the CRL, with
// WithCRL) and returns a Source over them. It fails unless the material is
// valid (see Reload); the certificate's SPIFFE ID becomes the source's
// identity.
func NewFileSource(certFile, keyFile, caFile string, opts ...FileSourceOption) (*FileSource, error) {
	s := &FileSource{certFile: certFile, keyFile: keyFile, caFile: caFile, log: slog.Default(), crlChanged: make(chan struct{})}
	for _, o := range opts {
		o.applyFileSource(s)
	}
	m, err := s.loadMaterial()
	if err != nil {
		return nil, err
	}
	s.current.Store(m)
	if s.crlFile != "" {
		r, err := s.loadCRL(m)
		if err != nil {
			return nil, err
		}
		s.crl.Store(r)
		s.warnStale(context.Background(), r)
	}
	return s, nil
}

// Certificate implements Source.
func (s *FileSource) Certificate() (*tls.Certificate, error) { return s.current.Load().cert, nil }

// TrustBundle implements Source.
func (s *FileSource) TrustBundle() (*x509.CertPool, error) { return s.current.Load().bundle, nil }

// CheckRevocation implements RevocationChecker: it fails if a certificate
// of any of the chains is on the CRL of the CA that issued it. Without
// WithCRL nothing is revoked.
func (s *FileSource) CheckRevocation(verifiedChains [][]*x509.Certificate) error {
	r := s.crl.Load()
	if r == nil {
		return nil
	}
	for _, chain := range verifiedChains {
		for _, c := range chain {
			if r.byIssuer[string(c.RawIssuer)][c.SerialNumber.String()] {
				return fmt.Errorf("mtls: certificate with serial number %s is revoked", c.SerialNumber.Text(16))
			}
		}
	}
	return nil
}

// RevocationsChanged implements RevocationWatcher: the channel is closed
// when a reloaded CRL takes effect.
func (s *FileSource) RevocationsChanged() <-chan struct{} {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	return s.crlChanged
}

// Reload re-reads the files now and swaps in the new material if it is
// valid: the certificate and key parse and match, the certificate is within
// its validity period, is a workload certificate for the same uses (see
// FileSource), carries the source's SPIFFE ID and chains to the new CA
// bundle, which must hold only CA certificates; a CRL must be signed by a
// CA of the bundle. On error the previous material stays in force (and a
// refused CRL does not hold back valid certificates).
func (s *FileSource) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx := context.Background()
	return errors.Join(s.reloadMaterial(ctx, true), s.reloadCRL(ctx, true))
}

// Watch polls the files every interval and reloads them (as Reload does)
// whenever their content has changed, or a refused version is still there
// (a certificate that is not yet valid becomes valid by waiting). It logs
// each reload and each refusal, once per refused content. It returns
// ctx.Err() when ctx is done.
func (s *FileSource) Watch(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("mtls: watch interval %s is not positive", interval)
	}
	return poll.Every(ctx, interval, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		_ = s.reloadMaterial(ctx, false)
		_ = s.reloadCRL(ctx, false)
	})
}

// reloadMaterial reloads the certificate, key and bundle; unless force, only
// when the files differ from the material in force. s.mu is held.
func (s *FileSource) reloadMaterial(ctx context.Context, force bool) error {
	old := s.current.Load()
	m, err := s.loadMaterialIfChanged(old.digest, force)
	if err != nil {
		s.refuse(ctx, &s.certRefusal, "certificate files refused; the previous certificate keeps serving", err)
		return err
	}
	s.certRefusal = ""
	if m == nil {
		return nil
	}
	s.current.Store(m)
	s.log.InfoContext(ctx, "certificate reloaded", "cert", s.certFile, "spiffe_id", s.id.String(),
		"serial", m.cert.Leaf.SerialNumber.Text(16), "not_after", m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"cas", len(m.cas))
	return nil
}

// reloadCRL reloads the CRL when its file or the bundle it is checked
// against changed (or when forced). s.mu is held.
func (s *FileSource) reloadCRL(ctx context.Context, force bool) error {
	if s.crlFile == "" {
		return nil
	}
	m := s.current.Load()
	data, err := os.ReadFile(s.crlFile)
	if err == nil {
		if !force && crlDigest(data, m) == s.crl.Load().digest {
			s.crlRefusal = ""
			s.warnStale(ctx, s.crl.Load())
			return nil
		}
		var r *revocations
		if r, err = parseRevocations(data, m); err == nil {
			s.crl.Store(r)
			s.changedMu.Lock()
			close(s.crlChanged)
			s.crlChanged = make(chan struct{})
			s.changedMu.Unlock()
			s.crlRefusal = ""
			s.log.InfoContext(ctx, "CRL reloaded", "crl", s.crlFile, "revoked", r.count)
			s.warnStale(ctx, r)
			return nil
		}
	}
	err = fmt.Errorf("mtls: CRL %s: %w", s.crlFile, err)
	s.refuse(ctx, &s.crlRefusal, "CRL refused; the previous CRL stays in force", err)
	return err
}

// warnStale logs, once per CRL, that r is past its next update: its issuer
// should have published a newer one, and revocations since are unknown
// here. It stays in force. s.mu is held, or s is not yet shared.
func (s *FileSource) warnStale(ctx context.Context, r *revocations) {
	if r.staleLogged || r.nextUpdate.IsZero() || time.Now().Before(r.nextUpdate) {
		return
	}
	r.staleLogged = true
	s.log.WarnContext(ctx, "CRL is past its next update; it stays in force, but revocations since are unknown",
		"crl", s.crlFile, "next_update", r.nextUpdate.UTC().Format(time.RFC3339))
}

// refuse logs a refusal, once for as long as the same reason repeats;
// *last is the reason logged last.
func (s *FileSource) refuse(ctx context.Context, last *string, msg string, err error) {
	if reason := err.Error(); reason != *last {
		*last = reason
		s.log.ErrorContext(ctx, msg, "cert", s.certFile, "reason", reason)
	}
}

func (s *FileSource) loadMaterial() (*material, error) {
	return s.loadMaterialIfChanged([32]byte{}, true)
}

// loadMaterialIfChanged reads and validates the files. It returns nil, nil
// when not forced and the files' digest equals unchanged.
func (s *FileSource) loadMaterialIfChanged(unchanged [32]byte, force bool) (*material, error) {
	var contents [3][]byte
	for i, name := range []string{s.certFile, s.keyFile, s.caFile} {
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("mtls: %w", err)
		}
		contents[i] = data
	}
	digest := digestOf(contents[:]...)
	if !force && digest == unchanged {
		return nil, nil
	}
	certPEM, keyPEM, caPEM := contents[0], contents[1], contents[2]
	// The key's parse errors name PEM block types at most, never key bytes.
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: certificate %s and key %s: %w", s.certFile, s.keyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("mtls: certificate %s: %w", s.certFile, err)
		}
		cert.Leaf = leaf
	}
	now := time.Now()
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("mtls: certificate %s is not valid before %s", s.certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("mtls: certificate %s expired at %s", s.certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	id, err := spiffeid.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("mtls: certificate %s: %w", s.certFile, err)
	}
	if !s.id.IsZero() && id != s.id {
		return nil, fmt.Errorf("mtls: certificate %s is for %s, but this source serves %s", s.certFile, id, s.id)
	}
	usages := s.usages
	if usages == nil {
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
			if slices.Contains(leaf.ExtKeyUsage, u) {
				usages = append(usages, u)
			}
		}
		if len(usages) == 0 {
			return nil, fmt.Errorf("mtls: certificate %s has neither the clientAuth nor the serverAuth extended key usage: peers would refuse it", s.certFile)
		}
	}
	for _, u := range usages {
		if err := CheckWorkloadCertificate(leaf, u); err != nil {
			return nil, fmt.Errorf("mtls: %s: %w", s.certFile, err)
		}
	}
	cas, err := pemfile.ParseCertificates(caPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: CA bundle %s: %w", s.caFile, err)
	}
	bundle := x509.NewCertPool()
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, fmt.Errorf("mtls: CA bundle %s holds a certificate that is not a CA", s.caFile)
		}
		bundle.AddCert(ca)
	}
	intermediates := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("mtls: certificate %s, chain: %w", s.certFile, err)
		}
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: bundle, Intermediates: intermediates, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("mtls: certificate %s does not chain to the CA bundle %s: %w", s.certFile, s.caFile, err)
	}
	if s.id.IsZero() {
		s.id, s.usages = id, usages
	}
	return &material{cert: &cert, cas: cas, bundle: bundle, digest: digest, bundleDigest: sha256.Sum256(caPEM)}, nil
}

func (s *FileSource) loadCRL(m *material) (*revocations, error) {
	data, err := os.ReadFile(s.crlFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: CRL: %w", err)
	}
	r, err := parseRevocations(data, m)
	if err != nil {
		return nil, fmt.Errorf("mtls: CRL %s: %w", s.crlFile, err)
	}
	return r, nil
}

// parseRevocations parses the CRLs in data and checks that each is signed
// by a CA of m's bundle.
func parseRevocations(data []byte, m *material) (*revocations, error) {
	crls, err := pemfile.ParseCRLs(data)
	if err != nil {
		return nil, err
	}
	r := &revocations{byIssuer: map[string]map[string]bool{}, digest: crlDigest(data, m)}
	for i, crl := range crls {
		if !signedByOneOf(crl, m.cas) {
			return nil, fmt.Errorf("CRL %d is not signed by a CA of the trust bundle", i)
		}
		serials := r.byIssuer[string(crl.RawIssuer)]
		if serials == nil {
			serials = map[string]bool{}
			r.byIssuer[string(crl.RawIssuer)] = serials
		}
		if !crl.NextUpdate.IsZero() && (r.nextUpdate.IsZero() || crl.NextUpdate.Before(r.nextUpdate)) {
			r.nextUpdate = crl.NextUpdate
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber != nil && !serials[e.SerialNumber.String()] {
				serials[e.SerialNumber.String()] = true
				r.count++
			}
		}
	}
	return r, nil
}

func signedByOneOf(crl *x509.RevocationList, cas []*x509.Certificate) bool {
	for _, ca := range cas {
		if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

func crlDigest(data []byte, m *material) [32]byte { return digestOf(data, m.bundleDigest[:]) }

// digestOf hashes parts with their lengths, so that moving bytes from one
// part to the next changes the digest.
func digestOf(parts ...[]byte) [32]byte {
	h := sha256.New()
	for _, p := range parts {
		_ = binary.Write(h, binary.BigEndian, uint64(len(p)))
		h.Write(p)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}
