package sample_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/services/sample"
)

// outcome is what one CreateOrder call reported.
type outcome struct {
	orderID string       // set when the call succeeded
	code    connect.Code // set when it failed
	err     error
	// phase and endPhase are what the user service was doing when the call
	// started and when it returned.
	phase, endPhase string
}

// ledger records every call's outcome.
type ledger struct {
	mu       sync.Mutex
	phase    string
	outcomes []outcome
}

func (l *ledger) setPhase(p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phase = p
}

func (l *ledger) currentPhase() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.phase
}

func (l *ledger) add(o outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.outcomes = append(l.outcomes, o)
}

// count returns how many calls started in phase succeeded and failed.
func (l *ledger) count(phase string) (ok, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.outcomes {
		if o.phase != phase {
			continue
		}
		if o.orderID != "" {
			ok++
		} else {
			failed++
		}
	}
	return ok, failed
}

type tokenKey struct{}

// TestUserServiceKilledDuringCreateOrderLoad kills the user service (a
// 1 ms drain) while 8 workers create orders, then starts a new one on the
// same address. Every call must either succeed with an order that is
// stored, or fail with unavailable; no call made entirely while the user
// service was down — from the moment the order service saw its change feed
// end, when its user cache stops serving — may succeed (one that started
// then can succeed once it is back); no order may be stored for a failed
// call; and orders succeed again once the user service is back.
func TestUserServiceKilledDuringCreateOrderLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sys, err := sample.Start(ctx, sample.Options{
		Dir: t.TempDir(), Users: 16,
		UserServerOptions: []rpc.ServerOption{rpc.WithShutdownGrace(time.Millisecond)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sys.Close(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("close: %v", err)
		}
	})
	creds, err := sys.Login(ctx, 8)
	if err != nil {
		t.Fatal(err)
	}
	orders, err := rpc.NewClient(orderv1connect.NewOrderServiceClient, sys.OrderURL, sys.Client,
		rpc.WithTokenSource(func(ctx context.Context) (string, error) { return ctx.Value(tokenKey{}).(string), nil }))
	if err != nil {
		t.Fatal(err)
	}

	l := &ledger{phase: "up"}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; loadCtx.Err() == nil; i++ {
				c := creds[(w+8*i)%len(creds)]
				phase := l.currentPhase()
				res, err := orders.CreateOrder(context.WithValue(ctx, tokenKey{}, c.Token), &orderv1.CreateOrderRequest{
					UserId: c.UserID, Items: []*orderv1.LineItem{{Sku: "fault-1", Quantity: 1}},
				})
				if err != nil {
					l.add(outcome{code: connect.CodeOf(err), err: err, phase: phase, endPhase: l.currentPhase()})
					continue
				}
				l.add(outcome{orderID: res.GetOrder().GetId(), phase: phase, endPhase: l.currentPhase()})
			}
		})
	}
	t.Cleanup(func() { stopLoad(); wg.Wait() })

	rpctest.WaitFor(t, "50 orders before the kill", func() bool { ok, _ := l.count("up"); return ok >= 50 })
	l.setPhase("stopping")
	if err := sys.StopUsers(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop the user service: %v", err)
	}
	// The feed's end reaches the order service a moment after the user
	// service stopped; until then its cache may still answer, as documented.
	rpctest.WaitFor(t, "the order service to see the user service gone", func() bool { return !sys.UserCache.Stats().Live })
	l.setPhase("down")
	rpctest.WaitFor(t, "50 calls while the user service is down", func() bool { _, failed := l.count("down"); return failed >= 50 })
	l.setPhase("restarting")
	if err := sys.StartUsers(); err != nil {
		t.Fatal(err)
	}
	l.setPhase("back")
	rpctest.WaitFor(t, "50 orders after the restart", func() bool { ok, _ := l.count("back"); return ok >= 50 })
	stopLoad()
	wg.Wait()

	var okIDs []string
	for _, o := range l.outcomes {
		switch {
		case o.orderID != "":
			if o.phase == "down" && o.endPhase == "down" {
				t.Errorf("order %s accepted by a call made entirely while the user service was down", o.orderID)
			}
			okIDs = append(okIDs, o.orderID)
		case o.code != connect.CodeUnavailable:
			t.Errorf("a call started while the user service was %s failed with %v, want unavailable", o.phase, o.err)
		}
	}
	n, err := sys.OrderStore.Count(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(okIDs) {
		t.Fatalf("%d orders stored, %d calls succeeded: an order was stored for a failed call", n, len(okIDs))
	}
	for _, id := range okIDs {
		if _, err := sys.OrderStore.Get(ctx, id); err != nil {
			t.Fatalf("order %s reported created is not stored: %v", id, err)
		}
	}
	for _, p := range []string{"up", "stopping", "down", "restarting", "back"} {
		ok, failed := l.count(p)
		t.Logf("user service %-10s: %4d orders, %4d unavailable", p, ok, failed)
	}
}
