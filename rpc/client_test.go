package rpc_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/rpc"
)

type countingTransport struct {
	next  http.RoundTripper
	calls atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.calls.Add(1)
	return c.next.RoundTrip(r)
}

// TestClientsShareHTTPClient gives two clients one HTTP client: both call
// through it (so they share its connections), and NewHTTPClient refuses the
// option rather than ignore it.
func TestClientsShareHTTPClient(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	shared := f.httpClient(t)
	counted := &countingTransport{next: shared.Transport}
	shared.Transport = counted
	for i := range 2 {
		c := f.userClient(t, rpc.WithHTTPClient(shared))
		if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if n := counted.calls.Load(); n != 2 {
		t.Fatalf("%d requests through the shared client, want 2", n)
	}
	if _, err := rpc.NewHTTPClient(f.ca.Source(f.client), rpc.WithHTTPClient(shared)); err == nil {
		t.Fatal("NewHTTPClient accepted WithHTTPClient")
	}
}
