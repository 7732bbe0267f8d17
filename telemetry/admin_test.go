package telemetry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/telemetry"
)

// TestAdminRemoteAccess: an address that is not loopback is refused before
// anything listens, unless WithRemoteAccess; with it, ListenAdmin tries to
// bind the address (192.0.2.1, a documentation address no interface has,
// fails to bind: the test binds nothing off loopback).
func TestAdminRemoteAccess(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New("testsvc")
	if err != nil {
		t.Fatal(err)
	}
	const addr = "192.0.2.1:0"
	_, err = telemetry.ListenAdmin(context.Background(), addr, tel)
	if err == nil || !strings.Contains(err.Error(), "loopback address only") {
		t.Fatalf("ListenAdmin(%q) without remote access: %v, want the loopback refusal", addr, err)
	}
	_, err = telemetry.ListenAdmin(context.Background(), addr, tel, telemetry.WithRemoteAccess())
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("ListenAdmin(%q) with remote access: %v, want the bind to be tried (and fail: no such address)", addr, err)
	}
	a, err := telemetry.ListenAdmin(context.Background(), "127.0.0.1:0", tel, telemetry.WithRemoteAccess())
	if err != nil {
		t.Fatal(err)
	}
	_ = a.Serve(canceled())
}

// TestAdminHealth: /healthz answers 200 while the health function reports
// serving and 503 otherwise, read on every request; without WithHealth
// there is no /healthz.
func TestAdminHealth(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New("testsvc")
	if err != nil {
		t.Fatal(err)
	}
	var serving atomic.Bool
	url := serveAdmin(t, tel, telemetry.WithHealth(serving.Load)) + telemetry.HealthPath
	for _, want := range []int{http.StatusServiceUnavailable, http.StatusOK, http.StatusServiceUnavailable} {
		if want == http.StatusOK {
			serving.Store(true)
		} else {
			serving.Store(false)
		}
		code, body := get(t, url)
		if code != want {
			t.Fatalf("GET %s with serving=%v: %d %q, want %d", url, serving.Load(), code, body, want)
		}
	}
	if code, _ := get(t, serveAdmin(t, tel)+telemetry.HealthPath); code != http.StatusNotFound {
		t.Fatalf("GET /healthz without WithHealth: %d, want 404", code)
	}
}

// serveAdmin serves an admin listener on 127.0.0.1 until the test ends and
// returns its base URL.
func serveAdmin(t *testing.T, tel *telemetry.Telemetry, opts ...telemetry.AdminOption) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := telemetry.ListenAdmin(ctx, "127.0.0.1:0", tel, opts...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + a.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}
