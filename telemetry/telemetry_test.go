package telemetry_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/telemetry"
)

// TestAdminListensOnLoopbackOnly: the admin listener is plain HTTP, so any
// address that is not loopback is refused before anything listens.
func TestAdminListensOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New("testsvc", telemetry.WithMetrics())
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0", "127.0.0.1", ""} {
		if a, err := telemetry.ListenAdmin(context.Background(), addr, tel); err == nil {
			_ = a.Serve(canceled())
			t.Errorf("ListenAdmin(%q) listened on %s", addr, a.Addr())
		}
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestAdminServesMetricsUntilCanceled: /metrics answers in the Prometheus
// text format while the context lives; Serve returns once it is canceled
// and the port is closed.
func TestAdminServesMetricsUntilCanceled(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New("testsvc", telemetry.WithMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := telemetry.ListenAdmin(ctx, "127.0.0.1:0", tel)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	url := "http://" + a.Addr().String() + telemetry.MetricsPath

	counter, err := tel.MeterProvider().Meter("test").Int64Counter("test.events")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(ctx, 3)
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "test_events_total 3") ||
		!strings.Contains(string(body), `target_info{service_name="testsvc"} 1`) {
		t.Fatalf("status %d, body:\n%s", res.StatusCode, body)
	}
	if res, err := http.Post(url, "text/plain", nil); err != nil || res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /metrics: %v %v", res, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := http.Get(url); err == nil {
		t.Fatal("admin listener still answers after Serve returned")
	}
}

// TestOffByDefault: without options the providers are no-ops and there are
// no metrics to serve.
func TestOffByDefault(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New("testsvc")
	if err != nil {
		t.Fatal(err)
	}
	if _, span := tel.TracerProvider().Tracer("t").Start(context.Background(), "s"); span.IsRecording() {
		t.Fatal("a span records without an exporter")
	}
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, telemetry.MetricsPath, nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("metrics handler without metrics: %d, want 404", rec.Code)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
