package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	"github.com/palisade-rpc/palisade/rpc"
)

// The tests here that measure the test process's memory do not run in
// parallel: the package's parallel tests wait until they are done.

// paddedImport returns an import of one book for userID whose line item —
// the part of the request ImportOrders copies into its reply — carries an
// unknown field (number 99) of n bytes.
func paddedImport(userID string, n int) *orderv1.ImportOrdersRequest {
	item := &orderv1.LineItem{Sku: "book-1", Quantity: 1}
	pad := protowire.AppendTag(nil, 99, protowire.BytesType)
	pad = protowire.AppendBytes(pad, bytes.Repeat([]byte{'u'}, n))
	item.ProtoReflect().SetUnknown(pad)
	return &orderv1.ImportOrdersRequest{UserId: userID, Items: []*orderv1.LineItem{item}}
}

// memory is the test process's heap in use after a collection, and its
// resident set.
type memory struct{ heap, rss uint64 }

func measure() memory {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := memory{heap: ms.HeapInuse}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.Lines(string(status)) {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.rss = kb << 10
			}
		}
	}
	return m
}

func (m memory) String() string {
	return fmt.Sprintf("heap %.1f MiB, rss %.1f MiB", float64(m.heap)/(1<<20), float64(m.rss)/(1<<20))
}

// growth is how much the heap grew from base to m, in MiB (0 if it shrank).
func (m memory) growth(base memory) float64 {
	if m.heap < base.heap {
		return 0
	}
	return float64(m.heap-base.heap) / (1 << 20)
}

// sendPadded sends n messages from paddedImport(userID, size) on stream,
// measuring memory after each of the first ten and every tenth after, and
// once more when done (the stream still open), and returns the largest
// measure and how many messages were sent before a Send failed.
func sendPadded(stream *connect.ClientStreamForClientSimple[orderv1.ImportOrdersRequest, orderv1.ImportOrdersResponse], userID string, n, size int) (peak memory, sent int) {
	msg := paddedImport(userID, size)
	sample := func() {
		m := measure()
		peak.heap, peak.rss = max(peak.heap, m.heap), max(peak.rss, m.rss)
	}
	for sent < n {
		if err := stream.Send(msg); err != nil {
			break // the server has answered; CloseAndReceive says how
		}
		sent++
		if sent <= 10 || sent%10 == 0 {
			sample()
		}
	}
	sample()
	return peak, sent
}

// TestImportOrdersDropsUnknownFields: the attack with the stream
// byte cap out of the way — alice imports 100 orders whose line item
// carries a 4 MB unknown field (400 MB on the wire). While the stream is
// open the process's heap stays within 64 MiB of where it started (before
// the codec dropped unknown fields it grew by the 400 MB), the 100 orders
// are stored, and the reply holds no byte of the unknown fields.
func TestImportOrdersDropsUnknownFields(t *testing.T) {
	f := StartFleet(t, FleetOptions{Replicas: 1, OrderOptions: []rpc.ServerOption{rpc.WithMaxStreamBytes(1 << 30)}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice := f.System(0).Login(t, "alice")
	orders := alice.Orders(t)

	base := measure()
	stream, err := orders.ImportOrders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peak, sent := sendPadded(stream, "alice", 100, 4_000_000)
	res, err := stream.CloseAndReceive()
	if err != nil || sent != 100 {
		t.Fatalf("import of %d padded orders: %v", sent, err)
	}
	t.Logf("100 messages of 4 MB: before %v; peak while open %v (+%.1f MiB); after the reply %v", base, peak, peak.growth(base), measure())
	if g := peak.growth(base); g > 64 {
		t.Errorf("the heap grew by %.1f MiB while the stream was open; want at most 64", g)
	}
	if n := len(res.GetOrders()); n != 100 {
		t.Fatalf("%d orders in the reply, want 100", n)
	}
	for i, o := range res.GetOrders() {
		if u := len(o.ProtoReflect().GetUnknown()) + len(o.GetItems()[0].ProtoReflect().GetUnknown()); u != 0 {
			t.Fatalf("order %d of the reply carries %d bytes of unknown fields", i, u)
		}
	}
	if size := proto.Size(res); size > 64<<10 {
		t.Fatalf("the reply is %d bytes", size)
	}
	if n, err := f.Replicas[0].Store.Count(ctx); err != nil || n != 100 {
		t.Fatalf("%d orders stored (%v), want 100", n, err)
	}
}

// TestImportOrdersStreamByteCap: with the default caps, the same attack
// fails with resource_exhausted on the message that takes the stream past
// rpc.DefaultMaxStreamBytes (the third of 4 MB), stores nothing, and the
// heap never grows by more than 32 MiB.
func TestImportOrdersStreamByteCap(t *testing.T) {
	f := StartFleet(t, FleetOptions{Replicas: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice := f.System(0).Login(t, "alice")
	orders := alice.Orders(t)

	base := measure()
	stream, err := orders.ImportOrders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peak, sent := sendPadded(stream, "alice", 100, 4_000_000)
	_, err = stream.CloseAndReceive()
	wantError(t, "100 messages of 4 MB", err, connect.CodeResourceExhausted,
		fmt.Sprintf("a stream may carry at most %d bytes from the client", rpc.DefaultMaxStreamBytes))
	t.Logf("%d messages of 4 MB sent before the refusal: before %v; peak %v; +%.1f MiB", sent, base, peak, peak.growth(base))
	if g := peak.growth(base); g > 32 {
		t.Errorf("the heap grew by %.1f MiB; want at most 32", g)
	}
	if n, err := f.Replicas[0].Store.Count(ctx); err != nil || n != 0 {
		t.Fatalf("%d orders stored (%v), want none", n, err)
	}
	f.Replicas[0].Server.WaitForLog(t, "procedure=/order.v1.OrderService/ImportOrders", "code=resource_exhausted")
}

// TestImportOrdersLargestValidImportFits: the largest import the schema
// allows — order.MaxImportOrders orders of 100 line items with 64-byte
// skus, 7.1 MB — passes under the default stream caps.
func TestImportOrdersLargestValidImportFits(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	alice := f.System(0).Login(t, "alice")
	items := make([]*orderv1.LineItem, 100)
	for i := range items {
		items[i] = &orderv1.LineItem{Sku: fmt.Sprintf("%064d", i), Quantity: 1000}
	}
	msg := &orderv1.ImportOrdersRequest{UserId: "alice", Items: items}

	stream, err := alice.Orders(t).ImportOrders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if err := stream.Send(msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	res, err := stream.CloseAndReceive()
	if err != nil || len(res.GetOrders()) != 1000 {
		t.Fatalf("the largest valid import (%d bytes): %v", 1000*proto.Size(msg), err)
	}
}

// TestTrackOrdersStreamsPerPrincipal: with the default cap, alice holds
// rpc.DefaultMaxStreamsPerPrincipal TrackOrders streams open; the next one
// fails with resource_exhausted when it opens. Her unary calls, bob's
// stream and the order replicas' change feeds (the order workload's
// streams to the user service) are not affected.
func TestTrackOrdersStreamsPerPrincipal(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 3})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := f.System(0)
	alice, bob := s.Login(t, "alice"), s.Login(t, "bob")
	track := func(orders orderv1connect.OrderServiceClient, id string) error {
		stream, err := orders.TrackOrders(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&orderv1.TrackOrdersRequest{OrderId: id}); err != nil {
			_, err = stream.Receive() // the server has answered; Receive says how
			return err
		}
		_, err = stream.Receive()
		return err
	}
	aliceOrders := alice.Orders(t)
	created, err := aliceOrders.CreateOrder(ctx, book("alice"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range rpc.DefaultMaxStreamsPerPrincipal {
		if err := track(aliceOrders, created.GetOrder().GetId()); err != nil {
			t.Fatalf("alice's stream %d: %v", i+1, err)
		}
	}
	err = track(aliceOrders, created.GetOrder().GetId())
	wantError(t, "one stream more", err, connect.CodeResourceExhausted,
		fmt.Sprintf("too many open streams: a caller may have at most %d at once", rpc.DefaultMaxStreamsPerPrincipal))
	if _, err := aliceOrders.CreateOrder(ctx, book("alice")); err != nil {
		t.Fatalf("alice's unary call at her stream cap: %v", err)
	}
	bobOrders := bob.Orders(t)
	bobs, err := bobOrders.CreateOrder(ctx, book("bob"))
	if err != nil {
		t.Fatal(err)
	}
	if err := track(bobOrders, bobs.GetOrder().GetId()); err != nil {
		t.Fatalf("bob's stream: %v", err)
	}
	f.WaitLive(t)
}
