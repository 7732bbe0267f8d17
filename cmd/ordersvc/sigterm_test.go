package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/palisade-rpc/palisade/certs"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/sample"
)

// childEnv makes the test binary run ordersvc's main instead of the tests,
// so the SIGTERM test runs the real binary's code as a process without a
// separate build. Otherwise TestMain checks that the tests leave no
// goroutine behind.
const childEnv = "PALISADE_TEST_RUN_ORDERSVC"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main() // exits 1 on an error
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// lookupDelay holds every GetUser at the user service, so that CreateOrder
// calls are surely in flight in the order service when SIGTERM comes. It
// records when each user's lookup arrived.
type lookupDelay struct {
	mu      sync.Mutex
	arrived map[string]time.Time
}

func (d *lookupDelay) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if r, ok := req.Any().(*userv1.GetUserRequest); ok && req.Spec().Procedure == userv1connect.UserServiceGetUserProcedure {
			d.mu.Lock()
			d.arrived[r.GetId()] = time.Now()
			d.mu.Unlock()
			select {
			case <-time.After(300 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		return next(ctx, req)
	}
}

func (d *lookupDelay) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (d *lookupDelay) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// arrivedBetween reports whether userID's lookup arrived within [from, to).
func (d *lookupDelay) arrivedBetween(userID string, from, to time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.arrived[userID]
	return ok && !at.Before(from) && at.Before(to)
}

// call is one CreateOrder call of the test.
type call struct {
	user       string
	start, end time.Time
	orderID    string
	err        error
}

// TestSIGTERMUnderLoad runs ordersvc as a process (the test binary
// re-executed) against an in-process user service, drives CreateOrder from
// 16 workers (one user each), and sends SIGTERM: every call that the order
// service was serving at that moment succeeds, every failed call is
// unavailable, calls after the exit are refused, the process exits 0 within
// its 5 s --shutdown-grace, and the database holds exactly the orders
// reported created.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	const grace = 5 * time.Second
	ctx := context.Background()
	delay := &lookupDelay{arrived: map[string]time.Time{}}
	sys, err := sample.Start(ctx, sample.Options{
		Dir: t.TempDir(), Users: 16,
		UserServerOptions: []rpc.ServerOption{rpc.WithInterceptors(delay)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Close() })

	// The order service's certificate files, from the system's CA.
	dir := t.TempDir()
	issued, err := sys.CA.Issue(certs.Leaf{
		SPIFFEID: "spiffe://palisade.local/svc/order", Usage: certs.UsageWorkload,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := issued.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"order.pem": issued.CertPEM(), "order-key.pem": keyPEM, "ca.pem": sys.CA.CertPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	db := filepath.Join(dir, "orders.db")

	var stderr bytes.Buffer
	cmd := exec.Command(os.Args[0], "--addr", addr, "--db", db, "--user-service", sys.UserURL,
		"--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "order.pem"), "--key", filepath.Join(dir, "order-key.pem"),
		"--shutdown-grace", grace.String(), "--log-format", "text",
		// Every order must ask the user service (where lookupDelay holds it),
		// so that calls are surely in flight at SIGTERM: no cached user is
		// ever fresh enough to skip the lookup.
		"--user-cache-max-age", "1ns")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("ordersvc's log:\n%s", stderr.String())
		}
	})
	waitHealthy(t, sys, "https://"+addr, exited)

	creds, err := sys.Login(ctx, 8)
	if err != nil {
		t.Fatal(err)
	}
	tok := rpc.WithTokenSource(func(ctx context.Context) (string, error) { return ctx.Value(tokenKey{}).(string), nil })
	orders, err := rpc.NewClient(orderv1connect.NewOrderServiceClient, "https://"+addr, sys.Client, tok)
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu    sync.Mutex
		calls []call
		gone  = make(chan struct{}) // closed once the process has exited
	)
	var wg sync.WaitGroup
	for _, c := range creds {
		wg.Go(func() {
			afterExit := 0
			for afterExit < 5 {
				select {
				case <-gone:
					afterExit++
				default:
				}
				rec := call{user: c.UserID, start: time.Now()}
				res, err := orders.CreateOrder(context.WithValue(ctx, tokenKey{}, c.Token), &orderv1.CreateOrderRequest{
					UserId: c.UserID, Items: []*orderv1.LineItem{{Sku: "sigterm-1", Quantity: 1}},
				})
				rec.end, rec.err = time.Now(), err
				if err == nil {
					rec.orderID = res.GetOrder().GetId()
				}
				mu.Lock()
				calls = append(calls, rec)
				mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // refusals are instant: do not spin
				}
			}
		})
	}
	okCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, c := range calls {
			if c.err == nil {
				n++
			}
		}
		return n
	}
	rpctest.WaitFor(t, "32 orders", func() bool { return okCount() >= 32 })

	sigterm := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(grace + 10*time.Second):
		t.Fatalf("ordersvc still running %v after SIGTERM", grace+10*time.Second)
	}
	took := time.Since(sigterm)
	close(gone)
	wg.Wait()
	exited <- exitErr // for the cleanup
	if exitErr != nil {
		t.Fatalf("ordersvc exited with %v", exitErr)
	}
	if took > grace {
		t.Fatalf("ordersvc took %v to exit, past its %v grace", took, grace)
	}

	// Judge every call.
	inFlight, refusedAfterExit, ok := 0, 0, 0
	var okIDs []string
	for _, c := range calls {
		servedAtSIGTERM := c.start.Before(sigterm) && c.end.After(sigterm) && delay.arrivedBetween(c.user, c.start, sigterm)
		if servedAtSIGTERM {
			inFlight++
			if c.err != nil {
				t.Errorf("a call in flight at SIGTERM failed: %v", c.err)
			}
		}
		if c.err != nil {
			if code := connect.CodeOf(c.err); code != connect.CodeUnavailable {
				t.Errorf("a call failed with %v, want unavailable", c.err)
			}
			if c.start.After(sigterm.Add(took)) {
				refusedAfterExit++
			}
			continue
		}
		if c.start.After(sigterm.Add(took)) {
			t.Errorf("order %s created after ordersvc exited", c.orderID)
		}
		ok++
		okIDs = append(okIDs, c.orderID)
	}
	if inFlight == 0 {
		t.Fatal("no call was in flight at SIGTERM: the test proved nothing")
	}
	if refusedAfterExit < len(creds) {
		t.Fatalf("%d calls refused after the exit, want at least %d", refusedAfterExit, len(creds))
	}

	store, err := order.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	n, err := store.Count(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != ok {
		t.Fatalf("%d orders in the database, %d calls reported success", n, ok)
	}
	for _, id := range okIDs {
		if _, err := store.Get(ctx, id); err != nil {
			t.Fatalf("order %s reported created: %v", id, err)
		}
	}
	for _, line := range []string{"msg=draining", "msg=stopped"} {
		if !bytes.Contains(stderr.Bytes(), []byte(line)) {
			t.Errorf("ordersvc's log lacks %q", line)
		}
	}
	t.Logf("%d calls: %d ok (%d in flight at SIGTERM), %d refused after the exit; exit %v after SIGTERM",
		len(calls), ok, inFlight, refusedAfterExit, took.Round(time.Millisecond))
}

type tokenKey struct{}

// waitHealthy waits for the order service's health check to answer SERVING.
func waitHealthy(t *testing.T, sys *sample.System, url string, exited chan error) {
	t.Helper()
	hc, err := rpc.NewHTTPClient(sys.Client)
	if err != nil {
		t.Fatal(err)
	}
	health := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](hc, url+rpc.HealthCheckProcedure)
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := health.CallUnary(context.Background(), connect.NewRequest(&healthpb.HealthCheckRequest{}))
		if err == nil && res.Msg.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("ordersvc exited before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ordersvc not healthy after 60 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
