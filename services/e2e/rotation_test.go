package e2e_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/services/order"
)

// TestOrderServiceCertificateRotatedUnderLoad rotates the order service's
// certificate through its watched files while customers create orders
// without pause, and lets the old certificate expire. Within a minute of
// that expiry the user service asks the order service to leave each
// connection (HTTP/2 GOAWAY), so the order service reconnects with the new
// certificate before the old connections are cut. The delegated tokens it
// cached are bound to the old certificate and are refused over the new
// connections; the order service exchanges new ones and retries. No call
// may fail, and every order reported created is stored.
func TestOrderServiceCertificateRotatedUnderLoad(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	logger, logs := rpctest.NewLogger(t)
	authz := engine(t, logger) // before the certificate: it runs the rego tests

	old := s.CA.Issue(certs.Leaf{
		SPIFFEID: "spiffe://palisade.local/svc/order", Usage: certs.UsageWorkload,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(4 * time.Second),
	})
	files := s.CA.WriteFiles(t.TempDir(), "ordersvc", old)
	src, err := mtls.NewFileSource(files.Cert, files.Key, files.CA, mtls.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	watching := make(chan struct{})
	go func() { defer close(watching); _ = src.Watch(ctx, 10*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-watching })
	store, err := order.OpenStore(ctx, t.TempDir()+"/orders.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	srv, err := order.NewServer(ctx, order.Config{Source: src, Store: store, Authorizer: authz, UserURL: s.Users.URL, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	s.Orders = rpctest.Serve(t, srv.Server, logs)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, name := range []string{"alice", "bob", "admin"} {
		client := s.Login(t, name).Orders(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := client.CreateOrder(context.Background(), &orderv1.CreateOrderRequest{UserId: name, Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}})
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	progress := func(what string) {
		t.Helper()
		target := ok.Load() + 30
		deadline := time.Now().Add(30 * time.Second)
		for ok.Load() < target && failed.Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("no progress %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	progress("with the first certificate")
	rotated := s.CA.Server("/svc/order")
	s.CA.WritePair(files, rotated)
	logs.WaitForLog(t, "certificate reloaded", "serial="+rotated.Cert.SerialNumber.Text(16))
	progress("after the rotation")
	time.Sleep(time.Until(old.Cert.NotAfter.Add(100 * time.Millisecond)))
	progress("after the old certificate expired")
	close(stop)
	wg.Wait()

	t.Logf("%d orders created, %d calls failed; %d connections cut at expiry", ok.Load(), failed.Load(),
		count(s.UserLogs.Lines(), "closing connection: the peer's certificate has expired"))
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d calls failed; first: %v", n, firstErr.Load())
	}
	// The retry path was taken: a delegated token bound to the old
	// certificate was refused over a new connection.
	s.UserLogs.WaitForLog(t, "request refused: unauthenticated", "bound to another client certificate")
	if stored, err := store.Count(context.Background()); err != nil || int64(stored) != ok.Load() {
		t.Fatalf("%d orders stored (%v), %d reported created", stored, err, ok.Load())
	}
}

func count(lines []string, substr string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}
