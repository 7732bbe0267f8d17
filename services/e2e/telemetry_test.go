package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/telemetry"
)

func spanAttr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// TestTelemetry checks the traces and the metrics of both services. The
// checks share one system (starting one compiles and tests two policies),
// and run one after the other, so the metrics see only their own calls.
func TestTelemetry(t *testing.T) {
	t.Parallel()
	s := Start(t)
	t.Run("trace follows the order to the user service", func(t *testing.T) { traceFollowsTheOrder(t, s) })
	t.Run("metrics move", func(t *testing.T) { metricsMove(t, s) })
}

// traceFollowsTheOrder: alice's CreateOrder is one trace across both
// services — the order service's server span, its client spans for GetUser
// and (inside it, for the delegated token) ExchangeToken, and the user
// service's server spans as their children — and the request id travels
// with it into the user service's logs.
func traceFollowsTheOrder(t *testing.T, s *System) {
	alice := s.Login(t, "alice")
	const id = "e2e-trace-1"
	ctx := rpc.WithRequestID(context.Background(), id)
	if _, err := alice.Orders(t).CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: "alice", Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}}); err != nil {
		t.Fatal(err)
	}

	var root tracetest.SpanStub
	for _, sp := range s.Spans.GetSpans() {
		if sp.Name == "order.v1.OrderService/CreateOrder" && spanAttr(sp, rpc.AttrRequestID) == id {
			root = sp
		}
	}
	if !root.SpanContext.IsValid() {
		t.Fatal("no server span for the CreateOrder call")
	}
	type key struct {
		service string
		kind    trace.SpanKind
		name    string
	}
	spans := map[key]tracetest.SpanStub{}
	for _, sp := range s.Spans.GetSpans() {
		if sp.SpanContext.TraceID() == root.SpanContext.TraceID() {
			k := key{sp.Resource.Attributes()[0].Value.Emit(), sp.SpanKind, sp.Name}
			if _, dup := spans[k]; dup {
				t.Fatalf("two spans %v in the trace", k)
			}
			spans[k] = sp
		}
	}
	getUser := spans[key{"ordersvc", trace.SpanKindClient, "user.v1.UserService/GetUser"}]
	exchange := spans[key{"ordersvc", trace.SpanKindClient, "palisade.token.v1.TokenService/ExchangeToken"}]
	userGet := spans[key{"usersvc", trace.SpanKindServer, "user.v1.UserService/GetUser"}]
	userExchange := spans[key{"usersvc", trace.SpanKindServer, "palisade.token.v1.TokenService/ExchangeToken"}]
	for parent, child := range map[*tracetest.SpanStub]*tracetest.SpanStub{
		&root: &getUser, &getUser: &exchange, &exchange: &userExchange, // the delegated token is fetched for the GetUser call
	} {
		if !child.SpanContext.IsValid() || child.Parent.SpanID() != parent.SpanContext.SpanID() {
			t.Errorf("span %q is not a child of %q (trace: %v)", child.Name, parent.Name, keys(spans))
		}
	}
	if userGet.Parent.SpanID() != getUser.SpanContext.SpanID() {
		t.Errorf("the user service's GetUser span is not a child of the order service's call (trace: %v)", keys(spans))
	}
	if len(spans) != 5 {
		t.Errorf("trace has %d spans, want 5: %v", len(spans), keys(spans))
	}

	// The user service knows the delegated caller, and logged the decision
	// the span names under the order call's request id.
	if got := spanAttr(userGet, rpc.AttrSubject) + " " + spanAttr(userGet, rpc.AttrActor); got != "alice spiffe://palisade.local/svc/order" {
		t.Errorf("user service span: subject and actor %q", got)
	}
	decision := spanAttr(userGet, rpc.AttrDecisionID)
	s.UserLogs.WaitForLog(t, "msg=decision", "decision_id="+decision, "request_id="+id)
	s.UserLogs.WaitForLog(t, `msg="user read"`, "request_id="+id)
	s.OrderLogs.WaitForLog(t, `msg="order accepted"`, "request_id="+id)

	for _, sp := range s.Spans.GetSpans() {
		for _, a := range sp.Attributes {
			if v := a.Value.Emit(); strings.Contains(v, alice.Token) || strings.Contains(v, "eyJ") {
				t.Errorf("span %s attribute %s holds a token", sp.Name, a.Key)
			}
		}
	}
}

func keys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// scrape reads the admin listener's /metrics into "name{labels}" → value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://" + addr + telemetry.MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", res.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sum adds the samples of metric name whose labels include every one of labels.
func sum(m map[string]float64, name string, labels ...string) float64 {
	var total float64
next:
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") && k != name {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(k, l) {
				continue next
			}
		}
		total += v
	}
	return total
}

// metricsMove scrapes the user service's admin listener before and after a
// few calls and checks that Palisade's counters and the RPC metrics moved as
// the calls should have moved them.
func metricsMove(t *testing.T, s *System) {
	ctx, cancel := context.WithCancel(context.Background())
	admin, err := telemetry.ListenAdmin(ctx, "127.0.0.1:0", s.UserTelemetry)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- admin.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("admin listener: %v", err)
		}
	})
	addr := admin.Addr().String()

	alice := s.Login(t, "alice")
	before := scrape(t, addr)
	// allowed twice (the second from the token cache), denied once, refused
	// once: alice's token from another certificate.
	for _, target := range []string{"alice", "alice", "bob"} {
		_, _ = alice.Users(t).GetUser(context.Background(), &userv1.GetUserRequest{Id: target})
	}
	stolen := Caller{Name: "intruder with alice's token", Cert: s.Certs["intruder"], Token: alice.Token, s: s}
	if _, err := stolen.Users(t).GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err == nil {
		t.Fatal("a token from another certificate was accepted")
	}
	after := scrape(t, addr)

	delta := func(name string, labels ...string) float64 {
		return sum(after, name, labels...) - sum(before, name, labels...)
	}
	checks := []struct {
		what       string
		got, least float64
	}{
		{"allowed decisions", delta("palisade_authz_decisions_total", `result="allow"`), 2},
		{"denied decisions", delta("palisade_authz_decisions_total", `result="deny"`), 1},
		{"binding failures", delta("palisade_authn_failures_total", `reason="binding"`), 1},
		{"token cache hits", delta("palisade_token_cache_lookups_total", `result="hit"`), 2},
		{"GetUser calls measured", delta("rpc_server_call_duration_seconds_count", `rpc_method="user.v1.UserService/GetUser"`), 3},
		{"GetUser denials measured", delta("rpc_server_call_duration_seconds_count", `rpc_method="user.v1.UserService/GetUser"`, `rpc_response_status_code="PERMISSION_DENIED"`), 1},
	}
	for _, c := range checks {
		if c.got < c.least {
			t.Errorf("%s moved by %v, want at least %v", c.what, c.got, c.least)
		}
	}
	if d := delta("palisade_authz_decisions_total", `result="deny"`); d != 1 {
		t.Errorf("denied decisions moved by %v, want exactly 1", d)
	}
	if got := after[fmt.Sprintf(`palisade_policy_revision_info{revision=%q}`, s.UserPolicy.Revision())]; got != 1 {
		t.Errorf("policy revision gauge for %s = %v, want 1", s.UserPolicy.Revision(), got)
	}
	leaf := s.Certs["user"].Cert
	want := float64(leaf.NotAfter.Unix())
	if got := after[`palisade_certificate_expiry_timestamp_seconds{spiffe_id="spiffe://palisade.local/svc/user"}`]; got != want {
		t.Errorf("certificate expiry gauge = %v, want %v (%s)", got, want, leaf.NotAfter.Format(time.RFC3339))
	}
}
