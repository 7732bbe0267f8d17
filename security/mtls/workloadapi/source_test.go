package workloadapi_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/fakeagent"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/mtls/workloadapi"
)

// spireSVID issues an X509-SVID as SPIRE does for spiffe://palisade.local<path>:
// the SPIFFE ID its only SAN, CA:FALSE, clientAuth and serverAuth, valid
// for an hour.
func spireSVID(ca *certstest.CA, path string) *certs.Issued {
	return ca.Issue(certs.Leaf{SPIFFEID: "spiffe://palisade.local" + path, Usage: certs.UsageWorkload, Validity: time.Hour})
}

// agentFixture is a Source fed by a fake agent, which first
// pushed first, of ca, for spiffe://palisade.local/svc/user.
type agentFixture struct {
	ca     *certstest.CA
	agent  *fakeagent.Agent
	first  *certs.Issued
	src    *workloadapi.Source
	logs   *rpctest.Logs
	pushed []*workload.X509SVID // every SVID pushed, for assertNoPushedKey
}

func newAgentFixture(t *testing.T) *agentFixture {
	t.Helper()
	f := &agentFixture{ca: certstest.NewCA(t), agent: fakeagent.Start(t)}
	f.first = spireSVID(f.ca, "/svc/user")
	f.push(t, fakeagent.SVID(t, f.first, f.ca.Cert))
	logger, logs := rpctest.NewLogger(t)
	f.logs = logs
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewSource(ctx, f.agent.Addr, workloadapi.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	f.src = src
	return f
}

func (f *agentFixture) push(t *testing.T, svids ...*workload.X509SVID) {
	t.Helper()
	f.pushed = append(f.pushed, svids...)
	f.agent.Push(svids...)
}

// waitServing waits until f.src serves issued.
func (f *agentFixture) waitServing(t *testing.T, issued *certs.Issued) {
	t.Helper()
	rpctest.WaitFor(t, "the source to serve serial "+issued.Cert.SerialNumber.Text(16), func() bool {
		return serial(t, f.src) == issued.Cert.SerialNumber.String()
	})
}

// assertNoPushedKey fails if any log line holds a private key pushed, in
// base64 or hex.
func (f *agentFixture) assertNoPushedKey(t *testing.T) {
	t.Helper()
	text := strings.Join(f.logs.Lines(), "\n")
	for _, s := range f.pushed {
		k := s.X509SvidKey
		for _, enc := range []string{base64.StdEncoding.EncodeToString(k)[8:40], strings.ToUpper(hexOf(k[8:24])), hexOf(k[8:24])} {
			if strings.Contains(text, enc) {
				t.Fatalf("key material in the log: %q", enc)
			}
		}
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// verifies reports whether pool is trusted to verify leaf.
func verifies(pool *x509.CertPool, leaf *x509.Certificate) bool {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// TestSourceRotates: the source serves what the agent pushes —
// a new SVID, then a new bundle — each as soon as it is pushed, and logs
// each change once.
func TestSourceRotates(t *testing.T) {
	t.Parallel()
	f := newAgentFixture(t)
	if got := f.src.ID().String(); got != "spiffe://palisade.local/svc/user" {
		t.Fatalf("ID = %s", got)
	}
	if id, err := mtls.IdentityOf(f.src); err != nil || id != f.src.ID() {
		t.Fatalf("IdentityOf = %s, %v", id, err)
	}
	if serial(t, f.src) != f.first.Cert.SerialNumber.String() {
		t.Fatal("the source does not serve the first SVID")
	}
	f.logs.WaitForLog(t, "SVID received from the workload API", "serial="+f.first.Cert.SerialNumber.Text(16))
	ca2 := certstest.NewCA(t)
	of2 := ca2.Client("/client/cli")
	if bundle, _ := f.src.TrustBundle(); !verifies(bundle, f.first.Cert) || verifies(bundle, of2.Cert) {
		t.Fatal("the first bundle is not the first CA alone")
	}

	next := spireSVID(f.ca, "/svc/user")
	f.push(t, fakeagent.SVID(t, next, f.ca.Cert))
	f.waitServing(t, next)
	f.logs.WaitForLog(t, "SVID updated", "serial="+next.Cert.SerialNumber.Text(16), "cas=1")

	f.push(t, fakeagent.SVID(t, next, f.ca.Cert, ca2.Cert))
	rpctest.WaitFor(t, "the new bundle", func() bool { b, _ := f.src.TrustBundle(); return verifies(b, of2.Cert) })
	f.logs.WaitForLog(t, "SVID updated", "serial="+next.Cert.SerialNumber.Text(16), "cas=2")

	// The agent sends everything whenever anything changes (a federated
	// bundle, another SVID of the workload): the same material again is
	// no change.
	f.push(t, fakeagent.SVID(t, next, f.ca.Cert, ca2.Cert))
	last := spireSVID(ca2, "/svc/user")
	f.push(t, fakeagent.SVID(t, last, f.ca.Cert, ca2.Cert))
	f.waitServing(t, last)
	f.logs.WaitForLog(t, "SVID updated", "serial="+last.Cert.SerialNumber.Text(16))
	if n := f.logs.Count("SVID updated"); n != 3 {
		t.Fatalf("%d updates logged, want 3", n)
	}
	f.assertNoPushedKey(t)
}

// TestSourcePicksItsSVID: when the agent sends several SVIDs,
// the first names the source's identity, and later the one with that
// identity is served, wherever it is in the push.
func TestSourcePicksItsSVID(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	agent := fakeagent.Start(t)
	user, other := spireSVID(ca, "/svc/user"), spireSVID(ca, "/svc/other")
	agent.Push(fakeagent.SVID(t, user, ca.Cert), fakeagent.SVID(t, other, ca.Cert))
	logger, _ := rpctest.NewLogger(t)
	src, err := workloadapi.NewSource(context.Background(), agent.Addr, workloadapi.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.ID().String() != "spiffe://palisade.local/svc/user" || serial(t, src) != user.Cert.SerialNumber.String() {
		t.Fatalf("the source took %s, want the first SVID", src.ID())
	}
	next := spireSVID(ca, "/svc/user")
	agent.Push(fakeagent.SVID(t, spireSVID(ca, "/svc/other"), ca.Cert), fakeagent.SVID(t, next, ca.Cert))
	rpctest.WaitFor(t, "the source's own SVID, second in the push", func() bool { return serial(t, src) == next.Cert.SerialNumber.String() })
}

// TestSourceRefusesBadSVIDs pushes what the source must refuse,
// from the attacker's side (a compromised or misconfigured agent): each is
// refused and logged once, without key material, the last good SVID keeps
// serving, and a good SVID pushed next is taken.
func TestSourceRefusesBadSVIDs(t *testing.T) {
	t.Parallel()
	now := time.Now()
	user := "spiffe://palisade.local/svc/user"
	cases := map[string]struct {
		push func(f *agentFixture) *workload.X509SVID
		// reason is logged; byGoSpiffe: go-spiffe drops the push when it
		// parses it, before the source sees it, and logs each time.
		reason     string
		byGoSpiffe bool
	}{
		"another workload": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, spireSVID(f.ca, "/svc/intruder"), f.ca.Cert)
		}, reason: "no SVID for " + user + " in the push (the first is for spiffe://palisade.local/svc/intruder)"},
		"another trust domain": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Issue(certs.Leaf{SPIFFEID: "spiffe://evil.example/svc/user", Usage: certs.UsageWorkload}), f.ca.Cert)
		}, reason: "no SVID for " + user},
		"expired": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Issue(certs.Leaf{SPIFFEID: user, Usage: certs.UsageWorkload,
				NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}), f.ca.Cert)
		}, reason: "workloadapi: SVID expired at"},
		"not yet valid": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Issue(certs.Leaf{SPIFFEID: user, Usage: certs.UsageWorkload,
				NotBefore: now.Add(time.Hour), Validity: time.Hour}), f.ca.Cert)
		}, reason: "workloadapi: SVID is not valid before"},
		"a usage dropped (clientAuth only)": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Client("/svc/user"), f.ca.Cert)
		}, reason: "workloadapi: SVID: certificate lacks the serverAuth extended key usage"},
		"no extended key usage": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.ExtKeyUsage = nil })), f.ca.Cert)
		}, reason: "workloadapi: SVID: certificate lacks the clientAuth extended key usage"},
		"anyExtendedKeyUsage only": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) {
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
			})), f.ca.Cert)
		}, reason: "workloadapi: SVID: certificate lacks the clientAuth extended key usage"},
		"no basic constraints": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.BasicConstraintsValid = false })), f.ca.Cert)
		}, reason: "workloadapi: SVID: certificate has no basic constraints extension"},
		"signed by a CA not in the bundle": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, spireSVID(certstest.NewCA(t), "/svc/user"), f.ca.Cert)
		}, reason: "workloadapi: SVID does not chain to the bundle of palisade.local"},
		"no bundle": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, spireSVID(f.ca, "/svc/user"))
		}, reason: "workloadapi: workload API: no bundle for trust domain palisade.local"},
		"a leaf in the bundle": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, spireSVID(f.ca, "/svc/user"), f.ca.Cert, f.ca.Client("/client/cli").Cert)
		}, reason: "workloadapi: bundle of palisade.local holds a certificate that is not a CA"},
		"CA:TRUE": {push: func(f *agentFixture) *workload.X509SVID {
			return fakeagent.SVID(t, f.ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.IsCA = true })), f.ca.Cert)
		}, reason: "leaf certificate must not have CA flag set to true", byGoSpiffe: true},
		"the key of another certificate": {push: func(f *agentFixture) *workload.X509SVID {
			s := fakeagent.SVID(t, spireSVID(f.ca, "/svc/user"), f.ca.Cert)
			s.X509SvidKey = fakeagent.SVID(t, spireSVID(f.ca, "/svc/user")).X509SvidKey
			return s
		}, reason: "private key validation failed", byGoSpiffe: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newAgentFixture(t)
			bad := tc.push(f)
			f.push(t, bad)
			f.push(t, bad) // twice: logged once
			good := spireSVID(f.ca, "/svc/user")
			f.push(t, fakeagent.SVID(t, good, f.ca.Cert))
			f.waitServing(t, good)
			// The pushes reach the source in order: the bad ones were seen.
			line := f.logs.WaitForLog(t, tc.reason)
			if tc.byGoSpiffe {
				if !strings.Contains(line, "workload API: Failed to parse X509-SVID response") {
					t.Fatalf("logged %q, want go-spiffe's refusal", line)
				}
			} else {
				if !strings.Contains(line, "SVID refused; the previous SVID keeps serving") {
					t.Fatalf("logged %q, want the source's refusal", line)
				}
				if n := f.logs.Count(tc.reason); n != 1 {
					t.Fatalf("the refusal was logged %d times, want once", n)
				}
			}
			f.logs.WaitForLog(t, "SVID updated", "serial="+good.Cert.SerialNumber.Text(16))
			if n := f.logs.Count("SVID updated"); n != 1 {
				t.Fatalf("%d updates logged, want 1 (the good SVID)", n)
			}
			f.assertNoPushedKey(t)
		})
	}
}

// TestNewSourceFails: a first SVID the source would refuse
// later, an address that is not a unix socket, an agent that never
// answers: each is a clear error, and nothing is left running — no
// goroutine (TestMain checks) and no connection to the agent.
func TestNewSourceFails(t *testing.T) {
	// Not parallel: it sets SPIFFE_ENDPOINT_SOCKET.
	ca := certstest.NewCA(t)
	agent := fakeagent.Start(t)
	ctx := context.Background()
	logger, logs := rpctest.NewLogger(t)

	agent.Push(fakeagent.SVID(t, ca.Forge(workloadTemplate("/svc/user", func(c *x509.Certificate) { c.ExtKeyUsage = nil })), ca.Cert))
	if _, err := workloadapi.NewSource(ctx, agent.Addr, workloadapi.WithLogger(logger)); err == nil || !strings.Contains(err.Error(), "neither the clientAuth nor the serverAuth") {
		t.Fatalf("a first SVID without extended key usage: %v", err)
	}
	rpctest.WaitFor(t, "the refused source to leave the agent", func() bool { return agent.Watchers() == 0 })

	for _, addr := range []string{"tcp://127.0.0.1:8081", "/run/spire/agent.sock", "unix"} {
		if _, err := workloadapi.NewSource(ctx, addr); err == nil || !strings.Contains(err.Error(), "want unix:///path/to/socket") {
			t.Fatalf("address %q: %v", addr, err)
		}
	}
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	if _, err := workloadapi.NewSource(ctx, ""); err == nil || !strings.Contains(err.Error(), "SPIFFE_ENDPOINT_SOCKET is not set") {
		t.Fatalf("no address: %v", err)
	}

	// An agent with nothing to push (no identity for this workload yet).
	silent := fakeagent.Start(t)
	waitCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := workloadapi.NewSource(waitCtx, silent.Addr, workloadapi.WithLogger(logger))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no SVID yet") {
		t.Fatalf("an agent that never pushes: %v", err)
	}
	rpctest.WaitFor(t, "the source that gave up to leave the agent", func() bool { return silent.Watchers() == 0 })

	// No agent at all; the environment names the socket.
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix://"+t.TempDir()+"/none.sock")
	waitCtx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := workloadapi.NewSource(waitCtx, "", workloadapi.WithLogger(logger)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no agent: %v", err)
	}
	logs.WaitForLog(t, "workload API: Failed to watch the Workload API", "none.sock")
}

// TestSourceClose: Close ends the watch (the agent loses its
// watcher; TestMain checks that no goroutine is left) and the source keeps
// serving its last SVID without taking new ones.
func TestSourceClose(t *testing.T) {
	t.Parallel()
	f := newAgentFixture(t)
	if n := f.agent.Watchers(); n != 1 {
		t.Fatalf("%d watchers, want the source", n)
	}
	if err := f.src.Close(); err != nil {
		t.Fatal(err)
	}
	rpctest.WaitFor(t, "the closed source to leave the agent", func() bool { return f.agent.Watchers() == 0 })
	f.push(t, fakeagent.SVID(t, spireSVID(f.ca, "/svc/user"), f.ca.Cert))
	if serial(t, f.src) != f.first.Cert.SerialNumber.String() {
		t.Fatal("a closed source took a new SVID")
	}
	if err := f.src.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// serial returns the serial number of src's current certificate.
func serial(t *testing.T, src mtls.Source) string {
	t.Helper()
	c, err := src.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

// workloadTemplate is a workload certificate for spiffe://palisade.local<path>
// (serverAuth and clientAuth, CA:FALSE), changed by mutate, for ca.Forge.
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
