package e2e_test

import (
	"context"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/palisade-rpc/palisade/certs/certstest"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/telemetry"
)

// otlpSpan is what the receiver keeps of a span.
type otlpSpan struct {
	service, name, traceID, spanID, parent, requestID string
}

// otlpReceiver is an OpenTelemetry collector's OTLP/gRPC trace receiver on
// 127.0.0.1 over mutual TLS.
type otlpReceiver struct {
	collectortracepb.UnimplementedTraceServiceServer
	URL string

	mu      sync.Mutex
	spans   []otlpSpan
	senders map[string]int
}

func startOTLPReceiver(t *testing.T, src mtls.Source) *otlpReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{URL: "https://" + ln.Addr().String(), senders: map[string]int{}}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(mtls.ServerConfig(src))))
	collectortracepb.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return r
}

func (r *otlpReceiver) Export(ctx context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	sender := "?"
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 && len(info.State.PeerCertificates[0].URIs) == 1 {
			sender = info.State.PeerCertificates[0].URIs[0].String()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.senders[sender]++
	for _, rs := range req.GetResourceSpans() {
		var service string
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				o := otlpSpan{service: service, name: sp.GetName(), traceID: hex.EncodeToString(sp.GetTraceId()),
					spanID: hex.EncodeToString(sp.GetSpanId()), parent: hex.EncodeToString(sp.GetParentSpanId())}
				for _, kv := range sp.GetAttributes() {
					if kv.GetKey() == rpc.AttrRequestID {
						o.requestID = kv.GetValue().GetStringValue()
					}
				}
				r.spans = append(r.spans, o)
			}
		}
	}
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

// TestCreateOrderTraceAtCollector: with both services exporting to an OTLP
// collector (over mutual TLS, each with its own certificate), alice's
// CreateOrder arrives there as one trace across both services: the order
// service's root span, its client spans, and the user service's server
// spans as their children.
func TestCreateOrderTraceAtCollector(t *testing.T) {
	t.Parallel()
	var (
		once sync.Once
		col  *otlpReceiver
	)
	s := Start(t, func(ca *certstest.CA, _ string, src mtls.Source) telemetry.Option {
		once.Do(func() { col = startOTLPReceiver(t, ca.Source(ca.Server("/svc/otel-collector"))) })
		return telemetry.WithOTLP(col.URL, src, telemetry.OTLPServerID("spiffe://palisade.local/svc/otel-collector"))
	})
	alice := s.Login(t, "alice")
	const id = "e2e-otlp-1"
	ctx := rpc.WithRequestID(context.Background(), id)
	if _, err := alice.Orders(t).CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}}); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tel := range []*telemetry.Telemetry{s.OrderTelemetry, s.UserTelemetry} {
		if err := tel.Shutdown(sctx); err != nil { // sends the batches
			t.Fatal(err)
		}
	}

	col.mu.Lock()
	spans, senders := append([]otlpSpan(nil), col.spans...), col.senders
	col.mu.Unlock()
	var root otlpSpan
	for _, sp := range spans {
		if sp.service == "ordersvc" && sp.name == "order.v1.OrderService/CreateOrder" && sp.requestID == id {
			root = sp
		}
	}
	if root.traceID == "" || root.parent != "" {
		t.Fatalf("no root server span of the CreateOrder call at the collector: %+v", spans)
	}
	byID := map[string]otlpSpan{}
	inTrace := map[string]int{}
	for _, sp := range spans {
		if sp.traceID == root.traceID {
			byID[sp.spanID] = sp
			inTrace[sp.service]++
		}
	}
	// Every span of the trace leads up to the root.
	for _, sp := range byID {
		for hops := 0; sp.spanID != root.spanID; hops++ {
			parent, ok := byID[sp.parent]
			if !ok || hops > 10 {
				t.Fatalf("span %+v does not lead up to the CreateOrder span in trace %s", sp, root.traceID)
			}
			sp = parent
		}
	}
	t.Logf("CreateOrder at the collector: trace %s, spans by service %v, exports by sender %v", root.traceID, inTrace, senders)
	if inTrace["ordersvc"] < 3 || inTrace["usersvc"] < 2 {
		t.Errorf("trace %s: spans by service %v, want the order service's server and client spans and the user service's server spans", root.traceID, inTrace)
	}
	if senders["spiffe://palisade.local/svc/order"] == 0 || senders["spiffe://palisade.local/svc/user"] == 0 {
		t.Errorf("exports by sender %v, want both services' certificates", senders)
	}
}
