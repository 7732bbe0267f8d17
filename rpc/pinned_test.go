package rpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// selfSigned returns a self-signed client certificate named cn without URI
// SANs, like the one the Connect conformance runner presents.
func selfSigned(t *testing.T, cn string) tls.Certificate {
	return certstest.TLSCertificate(certstest.SelfSigned(t, cn, certs.UsageClient))
}

// TestPinnedClientCertificate: a pinned certificate without a SPIFFE ID
// calls as its assigned workload; look-alikes do not.
func TestPinnedClientCertificate(t *testing.T) {
	t.Parallel()
	const pinnedID = "spiffe://palisade.local/client/conformance"
	ca := certstest.NewCA(t)
	pinned := selfSigned(t, "Conformance Client")
	// Trusted, pinned as the same name, but not this certificate.
	trustedTwin := selfSigned(t, "Conformance Client")
	// A second pinned certificate that the server does not trust.
	untrusted := selfSigned(t, "Conformance Client")

	bundle := ca.Pool()
	bundle.AddCert(pinned.Leaf)
	bundle.AddCert(trustedTwin.Leaf)
	src := mtls.NewStaticSource(certstest.TLSCertificate(ca.Server("/svc/user")), bundle)

	// Only the pinned workload may call: a success proves the ID was assigned.
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		userv1connect.UserServiceGetUserProcedure: {Workloads: []string{pinnedID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	users := &testusers.Service{}
	srv := rpctest.Start(t, src, authorizer, users.Mount,
		rpc.WithPinnedClientCertificate(pinned.Leaf, pinnedID),
		rpc.WithPinnedClientCertificate(untrusted.Leaf, "spiffe://palisade.local/client/untrusted"))

	call := func(t *testing.T, cert tls.Certificate) (*userv1.GetUserResponse, error) {
		t.Helper()
		roots := x509.NewCertPool()
		roots.AddCert(ca.Cert)
		cfg := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
		t.Cleanup(hc.CloseIdleConnections)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := userv1connect.NewUserServiceClient(hc, srv.URL).GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
		if err != nil {
			return nil, err
		}
		return res, nil
	}

	t.Run("pinned certificate calls as its workload", func(t *testing.T) {
		res, err := call(t, pinned)
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		if got := res.GetUser().GetDisplayName(); got != pinnedID {
			t.Fatalf("handler saw workload %q, want %q", got, pinnedID)
		}
	})
	t.Run("trusted certificate with the same name is not pinned", func(t *testing.T) {
		_, err := call(t, trustedTwin)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("code %v (%v), want unauthenticated", connect.CodeOf(err), err)
		}
		srv.WaitForLog(t, "request refused: unauthenticated", "certificate has no URI SAN")
	})
	t.Run("pinned but untrusted certificate fails the handshake", func(t *testing.T) {
		_, err := call(t, untrusted)
		if err == nil {
			t.Fatal("call succeeded")
		}
		if code := connect.CodeOf(err); code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
			t.Fatalf("handshake should have failed, got RPC error %v", err)
		}
		srv.WaitForLog(t, "TLS handshake error", "certificate signed by unknown authority")
	})
	t.Run("CA-issued certificate with a SPIFFE ID keeps its own", func(t *testing.T) {
		_, err := call(t, certstest.TLSCertificate(ca.Client("/client/cli")))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("code %v (%v), want permission_denied for spiffe://palisade.local/client/cli", connect.CodeOf(err), err)
		}
	})
	t.Cleanup(func() {
		if n := users.Calls(); n != 1 {
			t.Errorf("%d calls reached the handler, want 1 (the pinned one)", n)
		}
	})
}

func TestPinnedClientCertificateRefused(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	src := ca.Source(ca.Server("/svc/user"))
	plain := selfSigned(t, "tool")
	withSPIFFE := ca.Client("/client/cli").Cert
	// A URI SAN that is not a SPIFFE ID (set on the parsed certificate: the
	// check reads the parsed SANs).
	withOtherURI := ca.Issue(certs.Leaf{Usage: certs.UsageClient})
	withOtherURI.Cert.URIs = []*url.URL{{Scheme: "https", Host: "example.com"}}
	cases := map[string]struct {
		opts []rpc.ServerOption
		want string
	}{
		"nil certificate":              {[]rpc.ServerOption{rpc.WithPinnedClientCertificate(nil, "spiffe://palisade.local/x")}, "is nil"},
		"certificate with a SPIFFE ID": {[]rpc.ServerOption{rpc.WithPinnedClientCertificate(withSPIFFE, "spiffe://palisade.local/x")}, "has URI SANs"},
		"certificate with another URI": {[]rpc.ServerOption{rpc.WithPinnedClientCertificate(withOtherURI.Cert, "spiffe://palisade.local/x")}, "has URI SANs"},
		"ID of another trust domain":   {[]rpc.ServerOption{rpc.WithPinnedClientCertificate(plain.Leaf, "spiffe://evil.example/x")}, "not in trust domain palisade.local"},
		"not a SPIFFE ID":              {[]rpc.ServerOption{rpc.WithPinnedClientCertificate(plain.Leaf, "https://palisade.local/x")}, "scheme must be spiffe://"},
		"pinned twice": {[]rpc.ServerOption{
			rpc.WithPinnedClientCertificate(plain.Leaf, "spiffe://palisade.local/a"),
			rpc.WithPinnedClientCertificate(plain.Leaf, "spiffe://palisade.local/b"),
		}, "pinned twice"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv, err := rpc.NewServer(src, allowAll(t), c.opts...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("NewServer = %v, %v; want error containing %q", srv, err, c.want)
			}
		})
	}
}

// TestPinnedClientCertificateMustBeWorkload: pinning names a certificate,
// it does not make it a client certificate. A pinned, trusted certificate
// that is a CA (CA:TRUE) or has no extended key usage — which crypto/x509
// accepts for any purpose — fails the handshake like any other client's;
// the same certificate made properly (CA:FALSE, clientAuth) calls.
func TestPinnedClientCertificateMustBeWorkload(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	forge := func(mutate func(*x509.Certificate)) tls.Certificate {
		tmpl := &x509.Certificate{
			Subject:               pkix.Name{CommonName: "tool"},
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}
		if mutate != nil {
			mutate(tmpl)
		}
		return certstest.TLSCertificate(certstest.ForgeSelfSigned(t, tmpl))
	}
	cases := map[string]struct {
		cert tls.Certificate
		want string // "" means the call succeeds
	}{
		"client certificate":    {cert: forge(nil)},
		"CA:TRUE":               {cert: forge(func(c *x509.Certificate) { c.IsCA = true }), want: "mtls: client certificate is a CA certificate (CA:TRUE)"},
		"no extended key usage": {cert: forge(func(c *x509.Certificate) { c.ExtKeyUsage = nil }), want: "mtls: client certificate lacks the clientAuth extended key usage"},
		"no basic constraints":  {cert: forge(func(c *x509.Certificate) { c.BasicConstraintsValid = false }), want: "mtls: client certificate has no basic constraints"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const id = "spiffe://palisade.local/client/tool"
			bundle := ca.Pool()
			bundle.AddCert(c.cert.Leaf)
			authorizer, err := authz.NewAllowList(map[string]authz.Rule{userv1connect.UserServiceGetUserProcedure: {Workloads: []string{id}}})
			if err != nil {
				t.Fatal(err)
			}
			users := &testusers.Service{}
			srv := rpctest.Start(t, mtls.NewStaticSource(certstest.TLSCertificate(ca.Server("/svc/user")), bundle), authorizer, users.Mount,
				rpc.WithPinnedClientCertificate(c.cert.Leaf, id))
			cfg := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{c.cert}, NextProtos: []string{"h2"}}
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
			t.Cleanup(hc.CloseIdleConnections)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = userv1connect.NewUserServiceClient(hc, srv.URL).GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
			if c.want == "" {
				if err != nil || users.Calls() != 1 {
					t.Fatalf("call: %v (%d reached the handler)", err, users.Calls())
				}
				return
			}
			if err == nil {
				t.Fatal("call succeeded")
			}
			if code := connect.CodeOf(err); code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
				t.Fatalf("handshake should have failed, got RPC error %v", err)
			}
			srv.WaitForLog(t, "TLS handshake error", c.want)
			if n := users.Calls(); n != 0 {
				t.Fatalf("%d refused calls reached the handler", n)
			}
		})
	}
}
