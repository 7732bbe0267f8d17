package e2e_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/services/order"
)

// TestOrderServiceCertificateRotatedUnderLoad rotates the order service's
// certificate through its watched files while customers create orders
// without pause. The old certificate expires within rpc.ExpiryDrainWindow
// from the start, so the user service asks the order service to leave each
// connection (HTTP/2 GOAWAY) and the order service keeps reconnecting: once
// the rotation is picked up, with the new certificate. The delegated tokens
// it cached are bound to the old certificate and are refused over the new
// connections; the order service exchanges new ones and retries. No call
// may fail, and every order reported created is stored.
//
// The old certificate's lifetime is almost the whole drain window, so the
// rotation never races its expiry, however slow the machine: the test is
// about rotation under load, not about the cut at expiry, which the rpc
// package tests (TestExpiredPeerConnectionClosed and others).
func TestOrderServiceCertificateRotatedUnderLoad(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	logger, logs := rpctest.NewLogger(t)
	authz := engine(t, order.Policy(), logger) // before the certificate: it runs the rego tests

	old := s.CA.Issue(certs.Leaf{
		SPIFFEID: "spiffe://palisade.local/svc/order", Usage: certs.UsageWorkload,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(rpc.ExpiryDrainWindow - time.Second),
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
	// Every lookup asks the user service (cached users expire at once):
	// this test is about the delegated tokens of those calls.
	noCache := order.UserCacheOptions{MaxAge: time.Nanosecond}
	srv, err := order.NewServer(order.Config{Source: src, Store: store, Authorizer: authz, UserURL: s.Users.URL, Logger: logger, UserCache: noCache})
	if err != nil {
		t.Fatal(err)
	}
	runLoops(t, ctx, srv.Run)
	s.Orders = rpctest.Serve(t, srv.Server, logs)

	users := []string{"alice", "bob", "admin"}
	clients := make([]orderv1connect.OrderServiceClient, len(users))
	for i, name := range users {
		clients[i] = s.Login(t, name).Orders(t)
	}
	load := rpctest.StartLoad(t, len(users), func(i int) error {
		_, err := clients[i].CreateOrder(context.Background(), &orderv1.CreateOrderRequest{UserId: users[i], Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}})
		return err
	})
	progress := func(step string) { t.Helper(); load.Progress(t, step, 30) }

	progress("with the first certificate")
	rotated := s.CA.Server("/svc/order")
	s.CA.WritePair(files, rotated)
	logs.WaitForLog(t, "certificate reloaded", "serial="+rotated.Cert.SerialNumber.Text(16))
	progress("after the rotation")
	// The retry path was taken: a delegated token bound to the old
	// certificate was refused over a new connection.
	s.UserLogs.WaitForLog(t, "request refused: unauthenticated", "bound to another client certificate")
	progress("with the new certificate")
	load.Stop()
	left := time.Until(old.Cert.NotAfter)
	if left <= 0 {
		t.Fatalf("the test outlasted the old certificate (expired %s ago); the rotation was meant to happen well before", -left)
	}

	t.Logf("%d orders created, %d calls failed; rotated with %s left on the old certificate", load.OK(), load.Failed(), left.Round(time.Millisecond))
	if n := load.Failed(); n > 0 {
		t.Fatalf("%d calls failed; first: %v", n, load.FirstError())
	}
	if stored, err := store.Count(context.Background()); err != nil || int64(stored) != load.OK() {
		t.Fatalf("%d orders stored (%v), %d reported created", stored, err, load.OK())
	}
}
