package conformance_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/conformance"
	conformancev1 "github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1"
	"github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1/conformancev1connect"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// creds is a certificate and key in PEM and as a tls.Certificate.
type creds struct {
	certPEM, keyPEM []byte
	tls             tls.Certificate
}

// selfSigned makes a self-signed certificate like the runner's: no URI SAN;
// a server certificate for 127.0.0.1, or a client certificate.
func selfSigned(t *testing.T, cn string, server bool) creds {
	t.Helper()
	usage := certs.UsageClient
	if server {
		usage = certs.UsageServer
	}
	issued := certstest.SelfSigned(t, cn, usage, net.IPv4(127, 0, 0, 1))
	key, err := issued.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	return creds{certPEM: issued.CertPEM(), keyPEM: key, tls: certstest.TLSCertificate(issued)}
}

// runner plays the conformance runner: its server and client credentials.
type runner struct {
	server, client creds
}

func newRunner(t *testing.T) runner {
	return runner{server: selfSigned(t, "Conformance Server", true), client: selfSigned(t, "Conformance Client", false)}
}

func (r runner) request() *conformancev1.ServerCompatRequest {
	return &conformancev1.ServerCompatRequest{
		Protocol:      conformancev1.Protocol_PROTOCOL_CONNECT,
		HttpVersion:   conformancev1.HTTPVersion_HTTP_VERSION_2,
		UseTls:        true,
		ServerCreds:   &conformancev1.TLSCreds{Cert: r.server.certPEM, Key: r.server.keyPEM},
		ClientTlsCert: r.client.certPEM,
	}
}

// start starts a conformance server for r until the test ends and returns
// its base URL.
func start(t *testing.T, r runner, opts conformance.Options) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// A loaded machine can take longer than the default 2 s to drain.
	opts.ShutdownGrace = 30 * time.Second
	srv, err := conformance.Start(ctx, r.request(), opts)
	if err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := srv.Wait(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	if got := string(srv.Response.GetPemCert()); got != string(r.server.certPEM) {
		t.Fatalf("response certificate is not the runner's")
	}
	return "https://" + net.JoinHostPort(srv.Response.GetHost(), strconv.Itoa(int(srv.Response.GetPort())))
}

// client returns a ConformanceService client that trusts the runner's
// server certificate and presents cert, speaking protocol.
func client(t *testing.T, r runner, url string, cert tls.Certificate, opts ...connect.ClientOption) conformancev1connect.ConformanceServiceClient {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(r.server.tls.Leaf)
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return conformancev1connect.NewConformanceServiceClient(&http.Client{Transport: tr}, url, opts...)
}

var protocols = map[string][]connect.ClientOption{
	"connect":  nil,
	"grpc":     {connect.WithGRPC()},
	"grpc-web": {connect.WithGRPCWeb()},
}

// callBoth makes a unary call and a server-streaming call with header and
// returns their errors.
func callBoth(ctx context.Context, c conformancev1connect.ConformanceServiceClient, header http.Header) (unaryErr, streamErr error) {
	data := []byte("palisade")
	req := connect.NewRequest(&conformancev1.UnaryRequest{ResponseDefinition: &conformancev1.UnaryResponseDefinition{
		Response: &conformancev1.UnaryResponseDefinition_ResponseData{ResponseData: data},
	}})
	for k, v := range header {
		req.Header()[k] = v
	}
	res, err := c.Unary(ctx, req)
	if err == nil && string(res.Msg.GetPayload().GetData()) != string(data) {
		err = errors.New("unary: response data not echoed")
	}
	sreq := connect.NewRequest(&conformancev1.ServerStreamRequest{ResponseDefinition: &conformancev1.StreamResponseDefinition{
		ResponseData: [][]byte{data, data},
	}})
	for k, v := range header {
		sreq.Header()[k] = v
	}
	stream, err2 := c.ServerStream(ctx, sreq)
	if err2 != nil {
		return err, err2
	}
	defer stream.Close()
	n := 0
	for stream.Receive() {
		n++
	}
	if err2 = stream.Err(); err2 == nil && n != 2 {
		err2 = errors.New("server stream: want 2 responses")
	}
	return err, err2
}

// TestDefaultSuiteMode: the runner's client certificate, pinned as the
// protocol client, calls without a token; the request comes back echoed.
func TestDefaultSuiteMode(t *testing.T) {
	t.Parallel()
	r := newRunner(t)
	url := start(t, r, conformance.Options{})
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := client(t, r, url, r.client.tls, opts...)
			uerr, serr := callBoth(ctx, c, http.Header{"X-Conformance-Test": {"v1"}})
			if uerr != nil || serr != nil {
				t.Fatalf("unary: %v; server stream: %v", uerr, serr)
			}
			// An error definition comes back as that error, request info in its details.
			_, err := c.Unary(ctx, connect.NewRequest(&conformancev1.UnaryRequest{ResponseDefinition: &conformancev1.UnaryResponseDefinition{
				Response: &conformancev1.UnaryResponseDefinition_Error{Error: &conformancev1.Error{Code: conformancev1.Code_CODE_ABORTED, Message: new("told to")}},
			}}))
			var cerr *connect.Error
			if !errors.As(err, &cerr) || cerr.Code() != connect.CodeAborted || cerr.Message() != "told to" || len(cerr.Details()) != 1 {
				t.Fatalf("error definition: got %v", err)
			}
		})
	}
}

// TestForeignClientCertificateRefused: only the runner's certificate is
// trusted; another self-signed certificate with the same name fails the
// handshake.
func TestForeignClientCertificateRefused(t *testing.T) {
	t.Parallel()
	r := newRunner(t)
	logger, logs := rpctest.NewLogger(t)
	url := start(t, r, conformance.Options{Logger: logger})
	impostor := selfSigned(t, "Conformance Client", false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	uerr, _ := callBoth(ctx, client(t, r, url, impostor.tls), nil)
	if uerr == nil {
		t.Fatal("impostor's call succeeded")
	}
	// The client sees a TLS alert or a broken connection, never an RPC answer.
	if code := connect.CodeOf(uerr); code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
		t.Fatalf("want a failed handshake, got RPC error %v", uerr)
	}
	logs.WaitForLog(t, "TLS handshake error", "certificate signed by unknown authority")
}

// TestAuthSuiteTokens runs the token suite's credentials against a server
// in users mode, over each protocol, unary and streaming, and checks the
// codes the suite expects.
func TestAuthSuiteTokens(t *testing.T) {
	t.Parallel()
	suite, jwks, err := conformance.AuthSuite(time.Now(), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	verifier, err := conformance.NewVerifier(jwksFile)
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(t)
	url := start(t, r, conformance.Options{ClientID: conformance.UsersClientID, Tokens: verifier})

	type want struct {
		header http.Header
		code   connect.Code // 0: ok
	}
	cases := map[string]want{}
	for _, tc := range suite.GetTestCases() {
		name, ok := strings.CutPrefix(tc.GetRequest().GetTestName(), "unary/")
		if !ok {
			continue
		}
		w := want{header: http.Header{}, code: connect.Code(tc.GetExpectedResponse().GetError().GetCode())}
		for _, h := range tc.GetRequest().GetRequestHeaders() {
			w.header[h.GetName()] = h.GetValue()
		}
		cases[name] = w
	}
	wantCodes := map[string]connect.Code{
		"good-token": 0, "missing-token": connect.CodeUnauthenticated, "expired-token": connect.CodeUnauthenticated,
		"tampered-token": connect.CodeUnauthenticated, "forged-token": connect.CodeUnauthenticated, "denied-user": connect.CodePermissionDenied,
	}
	if len(cases) != len(wantCodes) {
		t.Fatalf("suite has unary cases %v", cases)
	}
	for name, w := range cases {
		if w.code != wantCodes[name] {
			t.Errorf("suite expects %v for %s, want %v", w.code, name, wantCodes[name])
		}
		for proto, opts := range protocols {
			t.Run(name+"/"+proto, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				uerr, serr := callBoth(ctx, client(t, r, url, r.client.tls, opts...), w.header)
				for kind, err := range map[string]error{"unary": uerr, "server stream": serr} {
					if got := codeOf(err); got != w.code {
						t.Errorf("%s: code %v (%v), want %v", kind, got, err, w.code)
					}
				}
			})
		}
	}
}

func codeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

func TestStartRefusesWhatPalisadeDoesNotServe(t *testing.T) {
	t.Parallel()
	r := newRunner(t)
	plaintext := r.request()
	plaintext.UseTls = false
	noClientCert := r.request()
	noClientCert.ClientTlsCert = nil
	badServerKey := r.request()
	badServerKey.ServerCreds.Key = newRunner(t).server.keyPEM
	for name, req := range map[string]*conformancev1.ServerCompatRequest{
		"plaintext":        plaintext,
		"no client cert":   noClientCert,
		"key not matching": badServerKey,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if srv, err := conformance.Start(ctx, req, conformance.Options{}); err == nil {
				cancel()
				_ = srv.Wait()
				t.Fatal("Start succeeded")
			}
		})
	}
}

func TestRequireClientCerts(t *testing.T) {
	t.Parallel()
	in := "name: Example\nreliesOnTls: false\nrelies_on_tls_client_certs: false\nmode: TEST_MODE_SERVER\ntestCases:\n- request:\n    testName: x\n    reliesOnTls: kept-when-nested\n"
	out, err := conformance.RequireClientCerts([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got := string(out)
	for _, want := range []string{"reliesOnTls: true\nreliesOnTlsClientCerts: true\n", "name: Example\nmode: TEST_MODE_SERVER\ntestCases:\n", "    reliesOnTls: kept-when-nested\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\nreliesOnTls:") + strings.Count(got, "\nrelies_on_tls"); n != 1 {
		t.Errorf("%d top-level TLS directives, want 1:\n%s", n, got)
	}
	if _, err := conformance.RequireClientCerts([]byte("reliesOnTls:\n  true\n")); err == nil {
		t.Error("a directive with its value on the next line was accepted")
	}
}

// TestMarshalSuite: the token suite encodes as JSON (which the runner reads
// as YAML) with the names the runner expects.
func TestMarshalSuite(t *testing.T) {
	t.Parallel()
	suite, _, err := conformance.AuthSuite(time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(suite.GetTestCases()); n != 30 {
		t.Fatalf("%d test cases, want 5 stream types x 6 credentials", n)
	}
	data, err := conformance.MarshalSuite(suite)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"reliesOnTlsClientCerts":`, `"@type":`, `"bidi-stream/full-duplex/forged-token"`, `"CODE_PERMISSION_DENIED"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("encoded suite lacks %s", want)
		}
	}
}

// TestPolicy runs the conformance policy's rego tests and requires them to
// cover every line of the policy, as the default policies' tests do.
func TestPolicy(t *testing.T) {
	t.Parallel()
	report, err := policy.RunTests(context.Background(), conformance.PolicyBundle(), policy.WithoutBase())
	if err != nil {
		t.Fatal(err)
	}
	if !report.Passed() || len(report.Results) == 0 {
		t.Fatalf("rego tests: %+v", report.Results)
	}
	if report.Coverage != 100 {
		t.Fatalf("coverage %.1f%%, not covered: %v", report.Coverage, report.NotCovered)
	}
}
