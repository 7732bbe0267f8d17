package rpc_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/rpc"
)

// spansOf returns the spans of kind with the request id attribute id (for
// client spans, which have no such attribute: every client span of the
// trace of the server span with that id).
func spansOf(spans tracetest.SpanStubs, kind trace.SpanKind, id string) []tracetest.SpanStub {
	var traceID trace.TraceID
	for _, s := range spans {
		if attr(s, rpc.AttrRequestID) == id {
			traceID = s.SpanContext.TraceID()
		}
	}
	var out []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanKind == kind && s.SpanContext.TraceID() == traceID && traceID.IsValid() {
			out = append(out, s)
		}
	}
	return out
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// TestCallsAreTraced: with a tracer provider, a call makes a client span
// and, as its child, a server span that carries the request id, the
// caller's identity and the authorization decision (whose id is the one in
// the decision log) — and never the token. A request authentication refuses
// gets a server span with the reason.
func TestCallsAreTraced(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	f := newFixture(t, allowAll(t), rpc.WithTracerProvider(tp), rpc.WithTokenVerifier(fakeTokens{}))
	withToken := func(tok string) rpc.ClientOption {
		return rpc.WithTokenSource(func(context.Context) (string, error) { return tok, nil })
	}
	call := func(id, tok string, deny bool) error {
		ctx := rpc.WithRequestID(context.Background(), id)
		client := f.userClient(t, rpc.WithTracerProvider(tp), withToken(tok))
		if deny {
			_, err := client.ListUsers(ctx, &userv1.ListUsersRequest{})
			return err
		}
		_, err := client.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
		return err
	}
	if err := call("trace-ok", goodToken, false); err != nil {
		t.Fatal(err)
	}
	if err := call("trace-denied", goodToken, true); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("ListUsers: %v", err)
	}
	if err := call("trace-refused", "expired.token.x", false); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("refused token: %v", err)
	}
	spans := exp.GetSpans()
	for _, s := range spans {
		for _, a := range s.Attributes {
			if strings.Contains(a.Value.Emit(), "token.") {
				t.Errorf("span %s attribute %s holds a token: %q", s.Name, a.Key, a.Value.Emit())
			}
		}
	}

	want := map[string]map[string]string{
		"trace-ok": {
			rpc.AttrPeer: clientID, rpc.AttrAuthnResult: "user", rpc.AttrSubject: "alice", rpc.AttrCertBound: "true",
			rpc.AttrDecisionResult: "allow", "rpc.response.status_code": "OK",
		},
		"trace-denied": {
			rpc.AttrAuthnResult: "user", rpc.AttrDecisionResult: "deny",
			rpc.AttrDecisionReason: `["procedure is not on the allow-list"]`, "rpc.response.status_code": "PERMISSION_DENIED",
		},
		"trace-refused": {
			rpc.AttrPeer: clientID, rpc.AttrAuthnResult: "refused", rpc.AttrAuthnReason: "expired", "rpc.response.status_code": "UNAUTHENTICATED",
		},
	}
	for id, attrs := range want {
		servers, clients := spansOf(spans, trace.SpanKindServer, id), spansOf(spans, trace.SpanKindClient, id)
		if len(servers) != 1 || len(clients) != 1 {
			t.Errorf("%s: %d server and %d client spans, want 1 and 1", id, len(servers), len(clients))
			continue
		}
		server, client := servers[0], clients[0]
		if server.Parent.SpanID() != client.SpanContext.SpanID() {
			t.Errorf("%s: server span's parent is %s, not the client span %s", id, server.Parent.SpanID(), client.SpanContext.SpanID())
		}
		for k, v := range attrs {
			if got := attr(server, k); got != v {
				t.Errorf("%s: %s = %q, want %q", id, k, got, v)
			}
		}
		if attrs[rpc.AttrDecisionResult] != "" {
			decision := attr(server, rpc.AttrDecisionID)
			f.srv.WaitForLog(t, "msg=decision", "decision_id="+decision, "request_id="+id)
		}
	}
}

// TestNoTracerNoSpans: without providers the server makes no spans even for
// a caller that sends a trace context, and answers as usual.
func TestNoTracerNoSpans(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	f := newFixture(t, allowAll(t))
	if _, err := f.userClient(t, rpc.WithTracerProvider(tp)).GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range exp.GetSpans() {
		if s.SpanKind != trace.SpanKindClient {
			t.Fatalf("server made span %s", s.Name)
		}
	}
	if n := len(exp.GetSpans()); n != 1 {
		t.Fatalf("%d spans, want the client's 1", n)
	}
}
