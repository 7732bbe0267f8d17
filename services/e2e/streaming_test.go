package e2e_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/user"
)

func book(userID string) *orderv1.CreateOrderRequest {
	return &orderv1.CreateOrderRequest{UserId: userID, Items: []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}}
}

func rename(t testing.TB, s *user.Store, id, name string) {
	t.Helper()
	if _, err := s.Update(context.Background(), &userv1.User{Id: id, DisplayName: name}, []string{"display_name"}); err != nil {
		t.Fatal(err)
	}
}

// wantError fails the test unless err has code and a message containing
// message.
func wantError(t *testing.T, what string, err error, code connect.Code, message string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != code || !strings.Contains(ce.Message(), message) {
		t.Fatalf("%s: %v; want %v: %s", what, err, code, message)
	}
}

// TestFanOutEveryReplicaAppliesEverySequenceOnce: 1 user service, 3 order
// replicas. The replicas cache alice; then an admin renames her 30 times
// through UpdateUser. Every replica applies every sequence exactly once, in
// order, logs the invalidations, and its next order carries the last name.
func TestFanOutEveryReplicaAppliesEverySequenceOnce(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 3})
	ctx := context.Background()
	alice, admin := f.System(0).Login(t, "alice"), f.System(0).Login(t, "admin")

	// Two orders on each replica: the first asks the user service, the
	// second is answered from the cache.
	for i, r := range f.Replicas {
		client := alice
		client.s = f.System(i)
		for range 2 {
			res, err := client.Orders(t).CreateOrder(ctx, book("alice"))
			if err != nil {
				t.Fatalf("replica %d: order: %v", i, err)
			}
			if got := res.GetOrder().GetUserDisplayName(); got != "Alice" {
				t.Fatalf("replica %d: display name %q", i, got)
			}
		}
		if s := r.Srv.UserCache.Stats(); s.Misses != 1 || s.Hits != 1 || s.Entries != 1 {
			t.Fatalf("replica %d after two orders: %+v; want 1 miss, 1 hit, 1 entry", i, s)
		}
	}

	const n = 30
	users := admin.Users(t)
	for i := range n {
		if _, err := users.UpdateUser(ctx, &userv1.UpdateUserRequest{
			User:       &userv1.User{Id: "alice", DisplayName: fmt.Sprintf("Alice %d", i)},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	latest := f.Latest(t)
	if latest != 3+n {
		t.Fatalf("latest sequence %d; want %d (3 seeded users, %d updates)", latest, 3+n, n)
	}
	f.WaitSequence(t, latest)
	for i, r := range f.Replicas {
		if got := r.Applied(); !slices.Equal(got, seqs(1, latest)) {
			t.Errorf("replica %d applied %v; want 1..%d once each, in order", i, got, latest)
		}
		s := r.Srv.UserCache.Stats()
		if s.Invalidations != uint64(latest) || s.Resets != 0 || s.LastSequence != latest {
			t.Errorf("replica %d: %+v", i, s)
		}
		r.Server.WaitForLog(t, "user cache invalidated", "user_id=alice", fmt.Sprintf("sequence=%d", 4), "was_cached=true")
		r.Server.WaitForLog(t, "user cache invalidated", "user_id=alice", fmt.Sprintf("sequence=%d", latest))
		client := alice
		client.s = f.System(i)
		res, err := client.Orders(t).CreateOrder(ctx, book("alice"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := res.GetOrder().GetUserDisplayName(), fmt.Sprintf("Alice %d", n-1); got != want {
			t.Errorf("replica %d: order after the updates has display name %q; want %q", i, got, want)
		}
	}
}

// TestFeedResumesAfterTheUserServiceRestarts: a writer commits changes
// without pause while the user service drains (SIGTERM's path) and starts
// again at the same address. The replicas' streams end with unavailable,
// they reconnect with backoff from their last sequence, and none misses or
// repeats a sequence.
func TestFeedResumesAfterTheUserServiceRestarts(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 3})
	var written atomic.Int64
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if _, err := f.UserStore.Update(context.Background(), &userv1.User{Id: "bob", DisplayName: fmt.Sprintf("Bob %d", i)}, []string{"display_name"}); err != nil {
				writerDone <- err
				return
			}
			written.Add(1)
		}
	}()
	rpctest.WaitFor(t, "20 changes are written", func() bool { return written.Load() >= 20 })
	f.StopUsers(t)
	before := written.Load()
	rpctest.WaitFor(t, "20 changes are written while the user service is down", func() bool { return written.Load() >= before+20 })
	f.StartUsers(t)
	f.WaitLive(t)
	after := written.Load()
	rpctest.WaitFor(t, "20 changes are written after the restart", func() bool { return written.Load() >= after+20 })
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}

	latest := f.Latest(t)
	f.WaitSequence(t, latest)
	for i, r := range f.Replicas {
		if got := r.Applied(); !slices.Equal(got, seqs(1, latest)) {
			t.Errorf("replica %d applied %d changes, not 1..%d once each in order: %v", i, len(got), latest, got)
		}
		if s := r.Srv.UserCache.Stats(); s.Reconnects < 1 || s.Resets != 0 {
			t.Errorf("replica %d: %+v; want a reconnection and no reset", i, s)
		}
		r.Server.WaitForLog(t, "user change feed lost", "server is draining")
	}
	t.Logf("%d changes, %d while the user service was down", latest, after-before)
}

// TestSubscriberFarBehindIsResetAndFlushes: the user service keeps 5
// changes. A replica that cached alice is cut off while 10 changes happen;
// when it reconnects, its position is older than the history, so it gets a
// reset first (its cache is flushed) and then the retained changes. A raw
// subscriber from the future (a replaced database) is reset too.
func TestSubscriberFarBehindIsResetAndFlushes(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1, Retention: user.Retention{MaxChanges: 5}})
	r := f.Replicas[0]
	ctx := context.Background()
	alice := f.System(0).Login(t, "alice")
	if _, err := alice.Orders(t).CreateOrder(ctx, book("alice")); err != nil {
		t.Fatal(err)
	}
	if s := r.Srv.UserCache.Stats(); s.Entries != 1 {
		t.Fatalf("alice is not cached: %+v", s)
	}

	f.StopUsers(t)
	for i := range 10 {
		rename(t, f.UserStore, "bob", fmt.Sprintf("Bob %d", i))
	}
	f.StartUsers(t)
	f.WaitSequence(t, 13)
	resets := r.Resets()
	if len(resets) != 1 || resets[0].GetOldestSequence() != 9 || resets[0].GetLatestSequence() != 13 {
		t.Fatalf("resets %v; want one {oldest 9, latest 13}", resets)
	}
	if got, want := r.Applied(), append(seqs(1, 3), seqs(9, 13)...); !slices.Equal(got, want) {
		t.Fatalf("applied %v; want %v", got, want)
	}
	f.WaitLive(t)
	s := r.Srv.UserCache.Stats()
	if s.Resets != 1 || s.Entries != 0 {
		t.Fatalf("after the reset: %+v; want 1 reset and an empty cache", s)
	}
	// alice is asked for again, not served from before the reset.
	alice.s = f.System(0)
	if _, err := alice.Orders(t).CreateOrder(ctx, book("alice")); err != nil {
		t.Fatal(err)
	}
	if got := r.Srv.UserCache.Stats(); got.Misses != s.Misses+1 || got.Hits != s.Hits {
		t.Fatalf("order after the reset: %+v; want a miss", got)
	}

	// The protocol as a raw subscriber sees it.
	feed, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.Users.URL, f.CA.Source(f.certs["order"]))
	if err != nil {
		t.Fatal(err)
	}
	bad, err := feed.WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{AfterSequence: -1})
	if err == nil && !bad.Receive() {
		err = bad.Err()
	}
	wantError(t, "a negative position", err, connect.CodeInvalidArgument, "after_sequence: must be greater than or equal to 0")
	for _, after := range []int64{2, 100} {
		streamCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		stream, err := feed.WatchUserChanges(streamCtx, &userv1.WatchUserChangesRequest{AfterSequence: after})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for stream.Receive() {
			switch ev := stream.Msg().GetEvent().(type) {
			case *userv1.WatchUserChangesResponse_Reset_:
				got = append(got, fmt.Sprintf("reset %d..%d", ev.Reset_.GetOldestSequence(), ev.Reset_.GetLatestSequence()))
			case *userv1.WatchUserChangesResponse_Change:
				got = append(got, fmt.Sprint(ev.Change.GetSequence()))
			case *userv1.WatchUserChangesResponse_Heartbeat:
				got = append(got, fmt.Sprintf("heartbeat %d", ev.Heartbeat.GetLatestSequence()))
				cancel()
			}
		}
		cancel()
		if want := []string{"reset 9..13", "9", "10", "11", "12", "13", "heartbeat 13"}; !slices.Equal(got, want) {
			t.Errorf("after_sequence %d: got %q; want %q", after, got, want)
		}
	}
}

// TestFeedRefusesUsersAndOtherWorkloads: only the order workload,
// presenting no token, may subscribe; the others get permission_denied
// before anything is streamed.
func TestFeedRefusesUsersAndOtherWorkloads(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	s := f.System(0)
	alice, admin := s.Login(t, "alice"), s.Login(t, "admin")
	cases := map[string]struct {
		caller Caller
		want   string
	}{
		"alice's token":                  {alice, "a user token may not subscribe to user changes"},
		"admin's token":                  {admin, "a user token may not subscribe to user changes"},
		"the order workload for a user":  {s.ActingFor(t, alice), "a user token may not subscribe to user changes"},
		"another workload, no token":     {s.Workload("intruder"), "workload spiffe://palisade.local/svc/intruder may not watch user changes"},
		"the cli workload, no token":     {Caller{Name: "cli", Cert: s.Certs["cli"], s: s}, "workload spiffe://palisade.local/client/cli may not watch user changes"},
		"the order workload, no token ✓": {s.Workload("order"), ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stream, err := c.caller.Users(t).WatchUserChanges(ctx, &userv1.WatchUserChangesRequest{})
			if err == nil && stream.Receive() {
				if c.want != "" {
					t.Fatalf("subscribed and got %v", stream.Msg())
				}
				return
			}
			if err == nil {
				err = stream.Err()
			}
			if c.want == "" {
				t.Fatalf("the order workload could not subscribe: %v", err)
			}
			wantError(t, "subscribe", err, connect.CodePermissionDenied, c.want)
		})
	}
}

// TestStreamWithAnExpiringTokenEnds: a TrackOrders stream opened with a
// token that expires in a second or two is answered until then, and ends
// with unauthenticated "token expired" — not before the token's expiry.
func TestStreamWithAnExpiringTokenEnds(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice := f.System(0).Login(t, "alice")
	created, err := alice.Orders(t).CreateOrder(ctx, book("alice"))
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(f.certs["cli"].Cert.Raw)
	short, exp, err := f.UserSrv.Issuer.Issue(token.Grant{Subject: "alice", Roles: []string{"customer"}, TTL: 2 * time.Second, CertSHA256: &digest})
	if err != nil {
		t.Fatal(err)
	}
	client := alice
	client.Token = short
	stream, err := client.Orders(t).TrackOrders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&orderv1.TrackOrdersRequest{OrderId: created.GetOrder().GetId()}); err != nil {
		t.Fatal(err)
	}
	res, err := stream.Receive()
	if err != nil || res.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_ACCEPTED {
		t.Fatalf("first answer: %v, %v", res, err)
	}
	_, err = stream.Receive()
	if time.Now().Before(exp) {
		t.Errorf("the stream ended before the token expired at %v", exp)
	}
	wantError(t, "the stream's end", err, connect.CodeUnauthenticated, "token expired")
}

// TestCacheIsBypassedWhileTheFeedIsDown: with the user service stopped
// (its drain ends the feed), an order for a cached user is refused
// (unavailable) rather than accepted on cached data; once the feed is back
// and caught up, the entry kept across the outage (no change to alice
// meanwhile) answers again.
func TestCacheIsBypassedWhileTheFeedIsDown(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	r := f.Replicas[0]
	ctx := context.Background()
	alice := f.System(0).Login(t, "alice")
	orders := alice.Orders(t)
	if _, err := orders.CreateOrder(ctx, book("alice")); err != nil {
		t.Fatal(err)
	}

	f.StopUsers(t)
	rpctest.WaitFor(t, "the cache stops serving", func() bool { return !r.Srv.UserCache.Stats().Live })
	before := r.Srv.UserCache.Stats()
	_, err := orders.CreateOrder(ctx, book("alice"))
	wantError(t, "order while the user service is down", err, connect.CodeUnavailable, "user service unavailable")
	if s := r.Srv.UserCache.Stats(); s.Bypasses != before.Bypasses+1 || s.Hits != before.Hits {
		t.Fatalf("lookup while down: %+v; want a bypass", s)
	}

	f.StartUsers(t)
	f.WaitLive(t)
	before = r.Srv.UserCache.Stats()
	if _, err := orders.CreateOrder(ctx, book("alice")); err != nil {
		t.Fatal(err)
	}
	if s := r.Srv.UserCache.Stats(); s.Hits != before.Hits+1 {
		t.Fatalf("lookup after the feed caught up: %+v; want a hit", s)
	}
}

// TestSubscriberStopsWithItsContext: the feed's subscriber, started by
// order.Server.Loops, stops when the context it runs with is done.
func TestSubscriberStopsWithItsContext(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	r := f.Replicas[0]
	select {
	case <-r.Srv.UserCache.Done():
		t.Fatal("the subscriber stopped on its own")
	default:
	}
	r.stop()
	select {
	case <-r.Srv.UserCache.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the subscriber did not stop with its context")
	}
	r.Server.WaitForLog(t, "user change feed stopped")
	if s := r.Srv.UserCache.Stats(); s.Live {
		t.Fatalf("a stopped cache is live: %+v", s)
	}
}

// TestImportOrdersIsAllOrNothing: every message of an import is authorized
// and validated; one refused or invalid message, or one inactive user,
// fails the call and stores nothing. An admin imports for anyone.
func TestImportOrdersIsAllOrNothing(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	r := f.Replicas[0]
	ctx := context.Background()
	if _, err := f.UserStore.Update(ctx, &userv1.User{Id: "bob", Active: false}, []string{"active"}); err != nil {
		t.Fatal(err)
	}
	alice, admin := f.System(0).Login(t, "alice"), f.System(0).Login(t, "admin")
	item := []*orderv1.LineItem{{Sku: "book-1", Quantity: 1}}
	imp := func(c Caller, msgs ...*orderv1.ImportOrdersRequest) (*orderv1.ImportOrdersResponse, error) {
		stream, err := c.Orders(t).ImportOrders(ctx)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				break // the server has answered; CloseAndReceive says how
			}
		}
		return stream.CloseAndReceive()
	}
	count := func() int {
		n, err := r.Store.Count(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	forAlice := &orderv1.ImportOrdersRequest{UserId: "alice", Items: item}
	cases := []struct {
		name   string
		caller Caller
		msgs   []*orderv1.ImportOrdersRequest
		code   connect.Code
		reason string
	}{
		{"alice imports one order for bob among hers", alice,
			[]*orderv1.ImportOrdersRequest{forAlice, {UserId: "bob", Items: item}, forAlice},
			connect.CodePermissionDenied, "customers may only import orders for themselves"},
		{"alice sends an invalid order", alice,
			[]*orderv1.ImportOrdersRequest{forAlice, {UserId: "alice"}},
			connect.CodeInvalidArgument, "items: must contain at least 1 item(s)"}, // the proto's rules, checked per message
		{"admin imports for an inactive user", admin,
			[]*orderv1.ImportOrdersRequest{forAlice, {UserId: "bob", Items: item}},
			connect.CodeFailedPrecondition, `user "bob" is not active`},
		{"an empty import", alice, nil, connect.CodeInvalidArgument, "orders: at least one order is required"},
	}
	for _, c := range cases {
		_, err := imp(c.caller, c.msgs...)
		wantError(t, c.name, err, c.code, c.reason)
		if n := count(); n != 0 {
			t.Fatalf("%s: %d orders stored; want none", c.name, n)
		}
	}
	r.Server.WaitForLog(t, "msg=decision", "procedure=/order.v1.OrderService/ImportOrders", "message=true", "allow=false")

	res, err := imp(alice, forAlice, forAlice)
	if err != nil || len(res.GetOrders()) != 2 {
		t.Fatalf("alice imports two of hers: %v, %v", res, err)
	}
	res, err = imp(admin, forAlice, &orderv1.ImportOrdersRequest{UserId: "admin", Items: item})
	if err != nil || len(res.GetOrders()) != 2 || res.GetOrders()[1].GetUserDisplayName() != "Admin" {
		t.Fatalf("admin imports for alice and themselves: %v, %v", res, err)
	}
	if n := count(); n != 4 {
		t.Fatalf("%d orders stored; want 4", n)
	}
}

// TestTrackOrders: the owner tracks an order and hears each status change;
// sending the id of someone else's order ends the stream with
// permission_denied; an admin tracks anyone's.
func TestTrackOrders(t *testing.T) {
	t.Parallel()
	f := StartFleet(t, FleetOptions{Replicas: 1})
	r := f.Replicas[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice, bob, admin := f.System(0).Login(t, "alice"), f.System(0).Login(t, "bob"), f.System(0).Login(t, "admin")
	created, err := alice.Orders(t).CreateOrder(ctx, book("alice"))
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetOrder().GetId()

	track := func(c Caller) *connect.BidiStreamForClientSimple[orderv1.TrackOrdersRequest, orderv1.TrackOrdersResponse] {
		stream, err := c.Orders(t).TrackOrders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&orderv1.TrackOrdersRequest{OrderId: id}); err != nil {
			t.Fatal(err)
		}
		return stream
	}
	next := func(who string, stream *connect.BidiStreamForClientSimple[orderv1.TrackOrdersRequest, orderv1.TrackOrdersResponse], want orderv1.OrderStatus) {
		t.Helper()
		res, err := stream.Receive()
		if err != nil || res.GetOrderId() != id || res.GetStatus() != want || res.GetTime() == nil {
			t.Fatalf("%s: %v, %v; want %v", who, res, err, want)
		}
	}
	mine, theirs := track(alice), track(admin)
	next("alice", mine, orderv1.OrderStatus_ORDER_STATUS_ACCEPTED)
	next("admin", theirs, orderv1.OrderStatus_ORDER_STATUS_ACCEPTED)
	if err := mine.CloseRequest(); err != nil { // no more ids; updates keep coming
		t.Fatal(err)
	}
	for _, status := range []orderv1.OrderStatus{orderv1.OrderStatus_ORDER_STATUS_SHIPPED, orderv1.OrderStatus_ORDER_STATUS_DELIVERED} {
		if _, err := r.Store.SetStatus(ctx, id, status); err != nil {
			t.Fatal(err)
		}
		next("alice", mine, status)
		next("admin", theirs, status)
	}

	_, err = track(bob).Receive()
	wantError(t, "bob tracks alice's order", err, connect.CodePermissionDenied, "customers may only track their own orders")
	stream := track(alice)
	if err := stream.Send(&orderv1.TrackOrdersRequest{OrderId: "ord_doesnotexist"}); err != nil {
		t.Fatal(err)
	}
	next("alice again", stream, orderv1.OrderStatus_ORDER_STATUS_DELIVERED)
	_, err = stream.Receive()
	wantError(t, "an unknown order id", err, connect.CodeNotFound, `order "ord_doesnotexist" not found`)
}
