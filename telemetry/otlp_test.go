package telemetry_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/telemetry"
)

// span is what the collector keeps of a span it received.
type span struct {
	service, name           string
	traceID, spanID, parent string
}

// collector is an OpenTelemetry collector's OTLP trace receiver on
// 127.0.0.1, over mutual TLS: gRPC (the collector TraceService) or HTTP
// (POST /v1/traces, gzipped protobuf). It keeps the spans it receives and
// the SPIFFE IDs of the clients that sent them.
type collector struct {
	URL   string
	conns atomic.Int64

	mu      sync.Mutex
	spans   []span
	senders map[string]int
}

func (c *collector) record(sender string, req *collectortracepb.ExportTraceServiceRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.senders[sender]++
	for _, rs := range req.GetResourceSpans() {
		var service string
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				c.spans = append(c.spans, span{service: service, name: sp.GetName(),
					traceID: hex.EncodeToString(sp.GetTraceId()), spanID: hex.EncodeToString(sp.GetSpanId()), parent: hex.EncodeToString(sp.GetParentSpanId())})
			}
		}
	}
}

func (c *collector) received() ([]span, map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	senders := map[string]int{}
	for k, v := range c.senders {
		senders[k] = v
	}
	return append([]span(nil), c.spans...), senders
}

type grpcReceiver struct {
	collectortracepb.UnimplementedTraceServiceServer
	c *collector
}

func (g grpcReceiver) Export(ctx context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	sender := "?"
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 && len(info.State.PeerCertificates[0].URIs) == 1 {
			sender = info.State.PeerCertificates[0].URIs[0].String()
		}
	}
	g.c.record(sender, req)
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != telemetry.OTLPTracesPath || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "not an OTLP/HTTP export", http.StatusBadRequest)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(io.LimitReader(body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := &collectortracepb.ExportTraceServiceRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sender := "?"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) == 1 {
		sender = r.TLS.PeerCertificates[0].URIs[0].String()
	}
	c.record(sender, req)
	out, _ := proto.Marshal(&collectortracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startCollector serves a receiver of protocol ("grpc" or "http") with
// src's certificate until the test ends.
func startCollector(t *testing.T, protocol string, src mtls.Source) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{URL: "https://" + ln.Addr().String(), senders: map[string]int{}}
	cl := countingListener{ln, &c.conns}
	switch protocol {
	case "grpc":
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(mtls.ServerConfig(src))))
		collectortracepb.RegisterTraceServiceServer(srv, grpcReceiver{c: c})
		go func() { _ = srv.Serve(cl) }()
		t.Cleanup(srv.Stop)
	case "http":
		srv := &http.Server{Handler: c, TLSConfig: mtls.ServerConfig(src, "h2", "http/1.1"), ReadHeaderTimeout: 5 * time.Second}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.ServeTLS(cl, "", "") }()
		t.Cleanup(func() { _ = srv.Close(); <-done })
	}
	return c
}

var allowAll = authz.AuthorizerFunc(func(context.Context, *authz.Input) (authz.Decision, error) {
	return authz.Decision{Allow: true}, nil
})

// relay is a UserService whose GetUser asks another one.
type relay struct {
	userv1connect.UnimplementedUserServiceHandler
	next userv1connect.UserServiceClient
}

func (r relay) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	return r.next.GetUser(ctx, req)
}

func newTel(t *testing.T, service string, opts ...telemetry.Option) *telemetry.Telemetry {
	t.Helper()
	tel, err := telemetry.New(service, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return tel
}

// TestOTLPOneTraceAcrossServices: two services, the front one calling the
// back one for each call it serves, export their spans to an OTLP
// collector over mutual TLS (gRPC and HTTP): each call arrives there as one
// trace — the front's server span, its client span, the back's server span,
// parent to child — sent by both services, each with its own certificate.
func TestOTLPOneTraceAcrossServices(t *testing.T) {
	t.Parallel()
	for _, protocol := range []string{"grpc", "http"} {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			ca := certstest.NewCA(t)
			col := startCollector(t, protocol, ca.Source(ca.Server("/svc/otel-collector")))
			// The front one checks the collector by SPIFFE ID, the back one
			// by trust domain and host. Over HTTP, the front one asks for it
			// with OTLPOverHTTP, the back one with a path in the URL.
			frontOpts := []telemetry.OTLPOption{telemetry.OTLPServerID("spiffe://palisade.local/svc/otel-collector")}
			backURL := col.URL
			if protocol == "http" {
				frontOpts = append(frontOpts, telemetry.OTLPOverHTTP())
				backURL += telemetry.OTLPTracesPath
			}
			frontSrc, backSrc := ca.Source(ca.Server("/svc/order")), ca.Source(ca.Server("/svc/user"))
			frontTel := newTel(t, "ordersvc", telemetry.WithOTLP(col.URL, frontSrc, frontOpts...))
			backTel := newTel(t, "usersvc", telemetry.WithOTLP(backURL, backSrc))

			users := &testusers.Service{}
			back := rpctest.Start(t, backSrc, allowAll, users.Mount, backTel.ServerOptions()...)
			next, err := rpc.NewClient(userv1connect.NewUserServiceClient, back.URL, frontSrc, frontTel.ClientOptions()...)
			if err != nil {
				t.Fatal(err)
			}
			front := rpctest.Start(t, frontSrc, allowAll, func(s *rpc.Server) error {
				return rpc.Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(relay{next: next}))
			}, frontTel.ServerOptions()...)
			cli, err := rpc.NewClient(userv1connect.NewUserServiceClient, front.URL, ca.Source(ca.Client("/client/cli")))
			if err != nil {
				t.Fatal(err)
			}
			const calls = 5
			for range calls {
				if _, err := cli.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for _, tel := range []*telemetry.Telemetry{frontTel, backTel} {
				if err := tel.Shutdown(ctx); err != nil { // sends the batches
					t.Fatal(err)
				}
			}

			spans, senders := col.received()
			if senders["spiffe://palisade.local/svc/order"] == 0 || senders["spiffe://palisade.local/svc/user"] == 0 || len(senders) != 2 {
				t.Errorf("exports by sender: %v, want from both services' certificates", senders)
			}
			byID := map[string]span{}
			for _, sp := range spans {
				byID[sp.spanID] = sp
			}
			const procedure = "user.v1.UserService/GetUser"
			traces := map[string]bool{}
			for _, sp := range spans {
				if sp.service != "usersvc" || sp.name != procedure {
					continue
				}
				// back server span ← front client span ← front server span (the root).
				client, ok := byID[sp.parent]
				if !ok || client.service != "ordersvc" || client.traceID != sp.traceID {
					t.Fatalf("usersvc's span %+v: its parent %+v is not ordersvc's client span of the same trace", sp, client)
				}
				server, ok := byID[client.parent]
				if !ok || server.service != "ordersvc" || server.name != procedure || server.traceID != sp.traceID || server.parent != "" {
					t.Fatalf("ordersvc's client span %+v: its parent %+v is not ordersvc's root server span of the same trace", client, server)
				}
				traces[sp.traceID] = true
			}
			t.Logf("%s: %d spans from %v; %d traces across both services", protocol, len(spans), senders, len(traces))
			if len(traces) != calls {
				t.Fatalf("%d traces across both services, want %d (one per call): %+v", len(traces), calls, spans)
			}
		})
	}
}

// TestOTLPRefusesClearText: an endpoint that is not https — or carries
// credentials, a query, no host — is New's error, naming https for
// http://, and never shows the URL's password.
func TestOTLPRefusesClearText(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	src := ca.Source(ca.Server("/svc/user"))
	for _, u := range []string{"http://127.0.0.1:4317", "127.0.0.1:4317", "grpc://127.0.0.1:4317", "https:///", "https://user:secret@127.0.0.1:4317",
		"https://127.0.0.1:4318/v1/traces?x=1", ""} {
		if _, err := telemetry.New("svc", telemetry.WithOTLP(u, src)); err == nil {
			t.Errorf("WithOTLP(%q) accepted", u)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("WithOTLP(%q): the error shows the password: %v", u, err)
		}
	}
	if _, err := telemetry.New("svc", telemetry.WithOTLP("http://127.0.0.1:4318", src, telemetry.OTLPOverHTTP())); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("http:// refused with %v, want a word on https", err)
	}
	if _, err := telemetry.New("svc", telemetry.WithOTLP("https://127.0.0.1:4317", nil)); err == nil {
		t.Error("WithOTLP without a source accepted")
	}
}

// TestOTLPRefusesImpostorCollectors: a collector that is not who it should
// be — another SPIFFE ID than OTLPServerID's, a certificate of another CA
// — is sent no span: it is connected to (the export was tried), the
// handshake fails and the export with it.
func TestOTLPRefusesImpostorCollectors(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	other := certstest.NewCA(t)
	for name, c := range map[string]struct {
		src  mtls.Source
		opts []telemetry.OTLPOption
	}{
		"another SPIFFE ID": {ca.Source(ca.Server("/svc/intruder")), []telemetry.OTLPOption{telemetry.OTLPServerID("spiffe://palisade.local/svc/otel-collector")}},
		"another CA":        {other.Source(other.Server("/svc/otel-collector")), nil},
		"another CA, HTTP":  {other.Source(other.Server("/svc/otel-collector")), []telemetry.OTLPOption{telemetry.OTLPOverHTTP()}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			protocol := "grpc"
			if strings.HasSuffix(name, "HTTP") {
				protocol = "http"
			}
			col := startCollector(t, protocol, c.src)
			src := ca.Source(ca.Server("/svc/user"))
			tel := newTel(t, "usersvc", telemetry.WithOTLP(col.URL, src, c.opts...))
			_, sp := tel.TracerProvider().Tracer("test").Start(context.Background(), "secret-operation")
			sp.End()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			// The export's failure goes to otel's global error handler, and a
			// retry may end with ctx: Shutdown's error says nothing here.
			_ = tel.Shutdown(ctx)
			spans, senders := col.received()
			if len(spans) != 0 || len(senders) != 0 || col.conns.Load() == 0 {
				t.Fatalf("impostor collector: %d spans, senders %v, %d connections; want connections and no span",
					len(spans), senders, col.conns.Load())
			}
		})
	}
}

// TestOTLPBesideStdout: WithOTLP adds to the stdout exporter, it does not
// replace it.
func TestOTLPBesideStdout(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	col := startCollector(t, "grpc", ca.Source(ca.Server("/svc/otel-collector")))
	var out bytes.Buffer
	tel := newTel(t, "usersvc", telemetry.WithTraceWriter(&out), telemetry.WithOTLP(col.URL, ca.Source(ca.Server("/svc/user"))))
	_, sp := tel.TracerProvider().Tracer("test").Start(context.Background(), "both-ways")
	sp.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans, _ := col.received()
	if len(spans) != 1 || spans[0].name != "both-ways" || !strings.Contains(out.String(), `"both-ways"`) {
		t.Fatalf("collector: %+v; stdout: %q", spans, out.String())
	}
}
