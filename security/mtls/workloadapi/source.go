// Package workloadapi is a certificate source for Palisade (an mtls.Source)
// fed by the SPIFFE Workload API: a SPIRE agent, or anything else that
// serves it on a unix socket.
//
// It is a package of its own because the Workload API is gRPC: a program
// that takes its certificates from files, and never imports this package,
// does not link grpc-go (8.7 MB of a 31 MB server binary).
package workloadapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Source is an mtls.Source fed by the SPIFFE Workload API: a SPIRE agent,
// or anything else that serves it on a unix socket. The agent pushes
// the workload's X509-SVID and its trust domain's bundle, and pushes them
// again whenever either changes (SPIRE renews an SVID at half its
// lifetime); each push is validated in full and swapped in at once, so new
// handshakes use it, while open connections keep the certificates they
// were made with until those expire (see rpc.ExpiryDrainWindow). A push
// that fails validation is refused and logged, and the last good material
// keeps serving.
//
// The rules are mtls.FileSource's. The identity is fixed: the SPIFFE ID of the
// first SVID (when the agent sends several, the first); later, the SVID
// with that ID is taken from each push, and a push without one is refused.
// Every SVID must be within its validity period, a workload certificate
// (basic constraints present with CA:FALSE) whose extended key usage names
// clientAuth or serverAuth, and every one of those the first named (SPIRE's
// X509-SVIDs name both), and chain to the bundle of its trust domain, which
// must hold only CA certificates. SPIRE's X509-SVIDs pass.
//
// Only the bundle of the workload's own trust domain is trusted. Federated
// bundles the agent sends are ignored: a Source has one pool of CAs, and a
// federated domain's CA in it could vouch for identities of this one.
//
// There is no revocation list: under SPIRE a certificate is revoked by
// letting it expire, so SVIDs are short-lived (an hour by default) and the
// connections made with one end when it expires.
//
// The source holds a connection to the agent and a goroutine that watches
// it until Close. While the agent is away (restarting, say), the last
// material keeps serving and the watch reconnects, with a backoff from 1s
// to 30s.
type Source struct {
	log    *slog.Logger
	client *spiffeapi.Client
	cancel context.CancelFunc
	done   chan struct{} // closed when the watch returns

	// Set by the first valid push, before NewSource returns;
	// read-only afterwards.
	id     spiffeid.ID
	usages []x509.ExtKeyUsage

	current atomic.Pointer[svidMaterial]

	// first receives the outcome of the first push, or of the watch if it
	// ends before one; only that is sent to it.
	first     chan error
	firstOnce sync.Once

	refusal   string // the last refusal logged; only the watch goroutine uses it
	closeOnce sync.Once
	closeErr  error
}

type svidMaterial struct {
	cert   *tls.Certificate // Leaf set
	bundle *x509.CertPool
	cas    int
	digest [32]byte // of the SVID's chain and the bundle's certificates
}

// SourceOption configures NewSource.
type SourceOption interface {
	applySource(*Source)
}

type sourceOptionFunc func(*Source)

func (f sourceOptionFunc) applySource(s *Source) { f(s) }

// WithLogger sets the source's logger (default slog.Default()), which
// records each SVID taken, each refused (with the reason) and the
// connection to the agent failing and recovering. Log lines never hold key
// material.
func WithLogger(l *slog.Logger) SourceOption {
	return sourceOptionFunc(func(s *Source) {
		if l != nil {
			s.log = l
		}
	})
}

// Source implements mtls.Source.
var _ mtls.Source = (*Source)(nil)

// NewSource connects to the Workload API at socket
// ("unix:///run/spire/agent.sock"; "" reads the SPIFFE_ENDPOINT_SOCKET
// environment variable, as go-spiffe does) and waits for the first SVID and
// bundle, which must be valid (see Source); its SPIFFE ID
// becomes the source's identity. ctx bounds that wait only, as in
// go-spiffe: the source then rotates until Close. If ctx ends first — the
// agent is not there, or has no identity for this workload — it returns
// ctx's error, and nothing keeps running.
//
// Only unix sockets are accepted: the Workload API hands out private keys
// in the clear (its gRPC runs without TLS), and a TCP endpoint would send
// them over the network.
func NewSource(ctx context.Context, socket string, opts ...SourceOption) (*Source, error) {
	s := &Source{log: slog.Default(), done: make(chan struct{}), first: make(chan error, 1)}
	for _, o := range opts {
		o.applySource(s)
	}
	addr := socket
	if addr == "" {
		addr, _ = spiffeapi.GetDefaultAddress()
		if addr == "" {
			return nil, fmt.Errorf("workloadapi: workload API: no socket given and %s is not set", spiffeapi.SocketEnv)
		}
	}
	if u, err := url.Parse(addr); err != nil || u.Scheme != "unix" {
		return nil, fmt.Errorf("workloadapi: workload API socket %q: want unix:///path/to/socket (the Workload API hands out private keys: Palisade reads it over a unix socket only)", addr)
	}
	client, err := spiffeapi.New(ctx, spiffeapi.WithAddr(addr), spiffeapi.WithLogger(spiffeLogger{s.log}))
	if err != nil {
		return nil, fmt.Errorf("workloadapi: workload API socket %q: %w", addr, err)
	}
	s.client = client
	watchCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		err := client.WatchX509Context(watchCtx, x509Watcher{s})
		if watchCtx.Err() != nil {
			return
		}
		// go-spiffe gives up only on InvalidArgument, which says that the
		// agent will never serve this client.
		err = fmt.Errorf("workloadapi: workload API: the watch ended: %w", err)
		s.firstOnce.Do(func() { s.first <- err })
		s.log.Error("workload API watch ended; the last SVID keeps serving until it expires", "socket", addr, "reason", err.Error())
	}()
	select {
	case err = <-s.first:
	case <-ctx.Done():
		err = fmt.Errorf("workloadapi: workload API socket %q: no SVID yet: %w", addr, ctx.Err())
	}
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// ID returns the source's SPIFFE ID: the identity every SVID it serves
// carries.
func (s *Source) ID() spiffeid.ID { return s.id }

// Certificate implements Source.
func (s *Source) Certificate() (*tls.Certificate, error) {
	return s.current.Load().cert, nil
}

// TrustBundle implements Source.
func (s *Source) TrustBundle() (*x509.CertPool, error) {
	return s.current.Load().bundle, nil
}

// Close stops watching the Workload API, waits for the watch to end and
// closes the connection to the agent. The source keeps serving the last
// material it validated (a server draining after Close can still complete
// handshakes), but no longer rotates. Close may be called more than once.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		if err := s.client.Close(); err != nil {
			s.closeErr = fmt.Errorf("workloadapi: workload API: close: %w", err)
		}
	})
	return s.closeErr
}

// x509Watcher receives the pushes of the source's watch.
type x509Watcher struct{ s *Source }

// OnX509ContextUpdate is called by go-spiffe's watch with each push, one at
// a time.
func (w x509Watcher) OnX509ContextUpdate(c *spiffeapi.X509Context) { w.s.update(c) }

// OnX509ContextWatchError is called by go-spiffe's watch when the
// connection to the agent fails; go-spiffe logs it (through the source's
// logger) and retries.
func (x509Watcher) OnX509ContextWatchError(error) {}

// update validates a push and swaps it in; the first is the outcome
// NewSource waits for. Called by the watch goroutine only.
func (s *Source) update(c *spiffeapi.X509Context) {
	first := s.current.Load() == nil
	m, err := s.validate(c)
	if first {
		if err == nil {
			s.current.Store(m)
			s.logInForce("SVID received from the workload API", m)
		}
		// After the store: NewSource returns a source that serves.
		s.firstOnce.Do(func() { s.first <- err })
		return
	}
	if err != nil {
		if reason := err.Error(); reason != s.refusal {
			s.refusal = reason
			s.log.Error("SVID refused; the previous SVID keeps serving", "spiffe_id", s.id.String(), "reason", reason)
		}
		return
	}
	s.refusal = ""
	if m.digest == s.current.Load().digest {
		return // the agent pushes everything when anything changes
	}
	s.current.Store(m)
	s.logInForce("SVID updated", m)
}

func (s *Source) logInForce(msg string, m *svidMaterial) {
	s.log.Info(msg, "spiffe_id", s.id.String(), "serial", m.cert.Leaf.SerialNumber.Text(16),
		"not_after", m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "cas", m.cas)
}

// validate picks the source's SVID from c and checks it and its bundle. On
// the first push (s.id zero) it sets the source's identity and usages.
// go-spiffe has already parsed the push: each SVID's key matches its leaf,
// the leaf has a SPIFFE ID and is not a CA, and every certificate after it
// is one.
func (s *Source) validate(c *spiffeapi.X509Context) (*svidMaterial, error) {
	if len(c.SVIDs) == 0 {
		return nil, errors.New("workloadapi: workload API: the push holds no SVID")
	}
	svid := c.SVIDs[0]
	if !s.id.IsZero() {
		i := slices.IndexFunc(c.SVIDs, func(v *x509svid.SVID) bool { return v.ID.String() == s.id.String() })
		if i < 0 {
			return nil, fmt.Errorf("workloadapi: workload API: no SVID for %s in the push (the first is for %s)", s.id, svid.ID)
		}
		svid = c.SVIDs[i]
	}
	leaf := svid.Certificates[0]
	now := time.Now()
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("workloadapi: SVID is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("workloadapi: SVID expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	id, err := spiffeid.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: SVID: %w", err)
	}
	if !s.id.IsZero() && id != s.id {
		return nil, fmt.Errorf("workloadapi: SVID is for %s, but this source serves %s", id, s.id)
	}
	usages := s.usages
	if usages == nil {
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
			if slices.Contains(leaf.ExtKeyUsage, u) {
				usages = append(usages, u)
			}
		}
		if len(usages) == 0 {
			return nil, errors.New("workloadapi: SVID has neither the clientAuth nor the serverAuth extended key usage: peers would refuse it")
		}
	}
	for _, u := range usages {
		if err := mtls.CheckWorkloadCertificate(leaf, u); err != nil {
			return nil, fmt.Errorf("workloadapi: SVID: %w", err)
		}
	}
	bundle, err := c.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil || bundle.Empty() {
		return nil, fmt.Errorf("workloadapi: workload API: no bundle for trust domain %s", id.TrustDomain())
	}
	cas := bundle.X509Authorities()
	pool := x509.NewCertPool()
	parts := make([][]byte, 0, len(svid.Certificates)+len(cas))
	for _, ca := range cas {
		if !ca.BasicConstraintsValid || !ca.IsCA {
			return nil, fmt.Errorf("workloadapi: bundle of %s holds a certificate that is not a CA", id.TrustDomain())
		}
		pool.AddCert(ca)
		parts = append(parts, ca.Raw)
	}
	intermediates := x509.NewCertPool()
	chain := make([][]byte, 0, len(svid.Certificates))
	for i, cert := range svid.Certificates {
		if i > 0 {
			intermediates.AddCert(cert)
		}
		chain = append(chain, cert.Raw)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: intermediates, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("workloadapi: SVID does not chain to the bundle of %s: %w", id.TrustDomain(), err)
	}
	if s.id.IsZero() {
		s.id, s.usages = id, usages
	}
	return &svidMaterial{
		cert:   &tls.Certificate{Certificate: chain, PrivateKey: svid.PrivateKey, Leaf: leaf},
		bundle: pool,
		cas:    len(cas),
		digest: digestOf(append(chain, parts...)...),
	}, nil
}

// spiffeLogger passes go-spiffe's log lines (failed watches, retries; never
// key material) to a slog.Logger.
type spiffeLogger struct{ l *slog.Logger }

func (l spiffeLogger) Debugf(format string, args ...any) {
	l.l.Debug("workload API: " + fmt.Sprintf(format, args...))
}
func (l spiffeLogger) Infof(format string, args ...any) {
	l.l.Info("workload API: " + fmt.Sprintf(format, args...))
}
func (l spiffeLogger) Warnf(format string, args ...any) {
	l.l.Warn("workload API: " + fmt.Sprintf(format, args...))
}
func (l spiffeLogger) Errorf(format string, args ...any) {
	l.l.Error("workload API: " + fmt.Sprintf(format, args...))
}

// digestOf hashes parts, each prefixed by its length, so that a change in
// where one part ends is a change of digest.
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
