package mtls_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// serveTLS accepts TLS connections on loopback, presenting cert, and
// completes each handshake (without asking for a client certificate); it
// returns the address. It stops when the test ends.
func serveTLS(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.(*tls.Conn).Handshake()
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// swappable is a Source whose trust bundle a test replaces.
type swappable struct {
	cert   tls.Certificate
	bundle atomic.Pointer[x509.CertPool]
}

func (s *swappable) Certificate() (*tls.Certificate, error) { return &s.cert, nil }
func (s *swappable) TrustBundle() (*x509.CertPool, error)   { return s.bundle.Load(), nil }

// TestClientVerifiesServer presents a client built by ClientConfig with
// servers it must refuse, from the attacker's side: the chain, name, usage,
// validity and identity checks crypto/tls would make are made by
// ClientConfig's own verification, so each is tested here.
func TestClientVerifiesServer(t *testing.T) {
	t.Parallel()
	ca, otherCA := certstest.NewCA(t), certstest.NewCA(t)
	src := ca.Source(ca.Client("/client/cli"))
	now := time.Now()
	leaf := func(l certs.Leaf) *certs.Issued {
		if l.SPIFFEID == "" {
			l.SPIFFEID = "spiffe://palisade.local/svc/user"
		}
		if l.IPAddresses == nil && l.DNSNames == nil {
			l.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		return ca.Issue(l)
	}
	user, _ := spiffeid.Parse("spiffe://palisade.local/svc/user")
	cases := map[string]struct {
		server    *certs.Issued
		authorize mtls.Authorizer
		want      string // "" means the handshake succeeds
	}{
		"good":                 {server: leaf(certs.Leaf{Usage: certs.UsageWorkload})},
		"serverAuth only":      {server: leaf(certs.Leaf{Usage: certs.UsageServer})},
		"another CA":           {server: otherCA.Server("/svc/user"), want: "certificate signed by unknown authority"},
		"expired":              {server: leaf(certs.Leaf{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}), want: "certificate has expired"},
		"not yet valid":        {server: leaf(certs.Leaf{NotBefore: now.Add(time.Hour), Validity: time.Hour}), want: "not yet valid"},
		"clientAuth only":      {server: leaf(certs.Leaf{Usage: certs.UsageClient}), want: "incompatible key usage"},
		"another host name":    {server: leaf(certs.Leaf{DNSNames: []string{"example.com"}}), want: "doesn't contain any IP SANs"},
		"no SPIFFE ID":         {server: ca.Issue(certs.Leaf{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}), want: "server identity"},
		"another workload":     {server: leaf(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/intruder"}), authorize: mtls.AuthorizeID(user), want: "peer is spiffe://palisade.local/svc/intruder"},
		"another trust domain": {server: leaf(certs.Leaf{SPIFFEID: "spiffe://evil.example/svc/user"}), want: "not in trust domain palisade.local"},
		"IPv6 SAN only":        {server: leaf(certs.Leaf{IPAddresses: []net.IP{net.IPv6loopback}}), want: "not 127.0.0.1"},
		// What crypto/x509 accepts and a workload certificate is not.
		"forged, but a proper workload certificate": {server: ca.Forge(workloadTemplate("/svc/user", nil))},
		"CA:TRUE": {server: ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.IsCA = true })),
			want: "mtls: server certificate is a CA certificate (CA:TRUE)"},
		"no basic constraints": {server: ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.BasicConstraintsValid = false })),
			want: "mtls: server certificate has no basic constraints"},
		"no extended key usage": {server: ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.ExtKeyUsage = nil })),
			want: "mtls: server certificate lacks the serverAuth extended key usage"},
		"anyExtendedKeyUsage only": {server: ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} })),
			want: "mtls: server certificate lacks the serverAuth extended key usage"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addr := serveTLS(t, certstest.TLSCertificate(tc.server))
			authorize := tc.authorize
			if authorize == nil {
				authorize = mtls.AuthorizeMemberOf("palisade.local")
			}
			cfg, err := mtls.ClientConfig(src, "127.0.0.1", authorize)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := tls.Dial("tcp", addr, cfg)
			if err == nil {
				conn.Close()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("handshake: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := mtls.ClientConfig(src, "", mtls.AuthorizeMemberOf("palisade.local")); err == nil {
		t.Fatal("ClientConfig accepted an empty server name")
	}
	if _, err := mtls.ClientConfig(src, "127.0.0.1", nil); err == nil {
		t.Fatal("ClientConfig accepted a nil authorizer")
	}
}

// TestClientUsesBundleOfTheHandshake: the trust bundle is read when the
// server's certificate is verified, not when the config is made, so a dial
// that straddles a CA rotation accepts a server already on the new CA.
func TestClientUsesBundleOfTheHandshake(t *testing.T) {
	t.Parallel()
	ca1, ca2 := certstest.NewCA(t), certstest.NewCA(t)
	src := &swappable{cert: certstest.TLSCertificate(ca1.Client("/client/cli"))}
	src.bundle.Store(ca1.Pool())
	cfg, err := mtls.ClientConfig(src, "127.0.0.1", mtls.AuthorizeMemberOf("palisade.local"))
	if err != nil {
		t.Fatal(err)
	}
	both := ca1.Pool()
	both.AddCert(ca2.Cert)
	src.bundle.Store(both)
	conn, err := tls.Dial("tcp", serveTLS(t, certstest.TLSCertificate(ca2.Server("/svc/user"))), cfg)
	if err != nil {
		t.Fatalf("server of the new CA, bundle rotated after the config was made: %v", err)
	}
	conn.Close()

	// And the other way: a CA dropped from the bundle is no longer trusted.
	src.bundle.Store(ca1.Pool())
	_, err = tls.Dial("tcp", serveTLS(t, certstest.TLSCertificate(ca2.Server("/svc/user"))), cfg)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("server of a CA no longer in the bundle: %v", err)
	}
}

// workloadTemplate is the template of a proper workload certificate for
// spiffe://palisade.local<path> — CA:FALSE, serverAuth and clientAuth,
// valid for 127.0.0.1 — changed by mutate (if not nil) into one that
// certstest.CA.Forge signs though the development CA would not issue it.
func workloadTemplate(path string, mutate func(*x509.Certificate)) *x509.Certificate {
	tmpl := &x509.Certificate{
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: certstest.TrustDomain, Path: path}},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if mutate != nil {
		mutate(tmpl)
	}
	return tmpl
}

// TestServerVerifiesClient presents a server made by ServerConfig with
// client certificates it must refuse, over TLS on 127.0.0.1: those crypto/tls
// refuses itself, and those it would accept — a CA certificate, one without
// basic constraints, one without extended key usage or with only
// anyExtendedKeyUsage — that ServerConfig must refuse at the handshake.
func TestServerVerifiesClient(t *testing.T) {
	t.Parallel()
	ca, otherCA := certstest.NewCA(t), certstest.NewCA(t)
	src := ca.Source(ca.Server("/svc/user"))
	cases := map[string]struct {
		client *certs.Issued
		want   string // "" means the handshake succeeds
	}{
		"workload":        {client: ca.Server("/svc/order")},
		"clientAuth only": {client: ca.Client("/client/cli")},
		"forged, but a proper workload certificate": {client: ca.Forge(workloadTemplate("/client/cli", nil))},
		"serverAuth only": {client: ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local/client/cli", Usage: certs.UsageServer}),
			want: "incompatible key usage"},
		"another CA": {client: otherCA.Client("/client/cli"), want: "certificate signed by unknown authority"},
		"CA:TRUE": {client: ca.Forge(workloadTemplate("/client/cli", func(c *x509.Certificate) { c.IsCA = true })),
			want: "mtls: client certificate is a CA certificate (CA:TRUE)"},
		"no basic constraints": {client: ca.Forge(workloadTemplate("/client/cli", func(c *x509.Certificate) { c.BasicConstraintsValid = false })),
			want: "mtls: client certificate has no basic constraints"},
		"no extended key usage": {client: ca.Forge(workloadTemplate("/client/cli", func(c *x509.Certificate) { c.ExtKeyUsage = nil })),
			want: "mtls: client certificate lacks the clientAuth extended key usage"},
		"anyExtendedKeyUsage only": {client: ca.Forge(workloadTemplate("/client/cli", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} })),
			want: "mtls: client certificate lacks the clientAuth extended key usage"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ln, err := tls.Listen("tcp", "127.0.0.1:0", mtls.ServerConfig(src))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			handshake := make(chan error, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					handshake <- err
					return
				}
				defer conn.Close()
				handshake <- conn.(*tls.Conn).Handshake()
			}()
			conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
				RootCAs: ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(tc.client)},
			})
			if err == nil {
				// TLS 1.3: the server judges the client's certificate after
				// the client's side of the handshake is done.
				_, _ = conn.Read(make([]byte, 1))
				conn.Close()
			}
			err = <-handshake
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("server handshake: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("server handshake: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
