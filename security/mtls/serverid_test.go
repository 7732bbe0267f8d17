package mtls_test

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// TestClientVerifiesServerByID presents a client built by
// ClientConfigForID with servers over TLS on 127.0.0.1: a SPIRE X509-SVID,
// which names no host or address, is accepted for its SPIFFE ID; every
// other check still refuses what it refuses by host name (chain, validity,
// usage, workload certificate), and another ID is refused. A client that
// checks the host name (ClientConfig) refuses the same SVID, as before.
func TestClientVerifiesServerByID(t *testing.T) {
	t.Parallel()
	ca, otherCA := certstest.NewCA(t), certstest.NewCA(t)
	src := ca.Source(ca.Client("/client/cli"))
	user, err := spiffeid.Parse("spiffe://palisade.local/svc/user")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// The SPIFFE ID alone: no DNS name, no IP address.
	uriOnly := func(l certs.Leaf) *certs.Issued {
		if l.SPIFFEID == "" {
			l.SPIFFEID = user.String()
		}
		return ca.Issue(l)
	}
	noSANs := func(mutate func(*x509.Certificate)) *x509.Certificate {
		return workloadTemplate("/svc/user", func(c *x509.Certificate) {
			c.IPAddresses = nil
			if mutate != nil {
				mutate(c)
			}
		})
	}
	cases := map[string]struct {
		server *certs.Issued
		want   string // "" means the handshake succeeds
	}{
		"SPIRE SVID (URI SAN only)":        {server: uriOnly(certs.Leaf{Usage: certs.UsageWorkload})},
		"serverAuth only":                  {server: uriOnly(certs.Leaf{Usage: certs.UsageServer})},
		"with names it is not checked for": {server: uriOnly(certs.Leaf{Usage: certs.UsageWorkload, DNSNames: []string{"example.com"}})},
		"another workload": {server: uriOnly(certs.Leaf{SPIFFEID: "spiffe://palisade.local/svc/intruder", Usage: certs.UsageWorkload}),
			want: "mtls: peer is spiffe://palisade.local/svc/intruder, want spiffe://palisade.local/svc/user"},
		"the same path in another trust domain": {server: uriOnly(certs.Leaf{SPIFFEID: "spiffe://evil.example/svc/user", Usage: certs.UsageWorkload}),
			want: "mtls: peer is spiffe://evil.example/svc/user, want spiffe://palisade.local/svc/user"},
		"no SPIFFE ID":    {server: ca.Issue(certs.Leaf{Usage: certs.UsageWorkload, IPAddresses: nil}), want: "mtls: server identity"},
		"another CA":      {server: otherCA.Issue(certs.Leaf{SPIFFEID: user.String(), Usage: certs.UsageWorkload}), want: "certificate signed by unknown authority"},
		"expired":         {server: uriOnly(certs.Leaf{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}), want: "certificate has expired"},
		"not yet valid":   {server: uriOnly(certs.Leaf{NotBefore: now.Add(time.Hour), Validity: time.Hour}), want: "not yet valid"},
		"clientAuth only": {server: uriOnly(certs.Leaf{Usage: certs.UsageClient}), want: "incompatible key usage"},
		"CA:TRUE": {server: ca.Forge(noSANs(func(c *x509.Certificate) { c.IsCA = true })),
			want: "mtls: server certificate is a CA certificate (CA:TRUE)"},
		"no basic constraints": {server: ca.Forge(noSANs(func(c *x509.Certificate) { c.BasicConstraintsValid = false })),
			want: "mtls: server certificate has no basic constraints"},
		"no extended key usage": {server: ca.Forge(noSANs(func(c *x509.Certificate) { c.ExtKeyUsage = nil })),
			want: "mtls: server certificate lacks the serverAuth extended key usage"},
		"anyExtendedKeyUsage only": {server: ca.Forge(noSANs(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} })),
			want: "mtls: server certificate lacks the serverAuth extended key usage"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addr := serveTLS(t, certstest.TLSCertificate(tc.server))
			cfg, err := mtls.ClientConfigForID(src, user)
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

	t.Run("by host name", func(t *testing.T) {
		t.Parallel()
		addr := serveTLS(t, certstest.TLSCertificate(uriOnly(certs.Leaf{Usage: certs.UsageWorkload})))
		cfg, err := mtls.ClientConfig(src, "127.0.0.1", mtls.AuthorizeID(user))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tls.Dial("tcp", addr, cfg); err == nil || !strings.Contains(err.Error(), "doesn't contain any IP SANs") {
			t.Fatalf("a SPIRE SVID checked for a host name: %v, want refused", err)
		}
	})
	if _, err := mtls.ClientConfigForID(src, spiffeid.ID{}); err == nil {
		t.Fatal("ClientConfigForID accepted the zero ID")
	}
}
