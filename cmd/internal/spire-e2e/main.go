// Command spire-e2e is the caller of `make spire-e2e` (scripts/spire-e2e.sh):
// it takes its own identity from a SPIRE agent's Workload API, logs alice
// in at usersvc, and calls CreateOrder on ordersvc without a pause from
// several workers until it has seen the served certificate of ordersvc and
// of usersvc, and its own SVID, change --rotations times each; then it
// prints the figures and exits non-zero if any call failed, or if the
// rotations did not all happen within --timeout.
//
// The certificate a service serves is read by a handshake of its own every
// --probe-interval (a new connection: the calls' connections keep the
// certificates they were made with until they are drained).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/services/user"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "spire-e2e:", err)
		os.Exit(1)
	}
}

type config struct {
	socket, userURL, orderURL, passwords string
	userID, orderID                      spiffeid.ID
	rotations, workers                   int
	timeout, probeInterval               time.Duration
}

func parseFlags() (config, error) {
	var c config
	var userID, orderID string
	flag.StringVar(&c.socket, "socket", "", "Workload API socket of the SPIRE agent (unix:///…)")
	flag.StringVar(&c.userURL, "user-url", "https://127.0.0.1:8443", "base URL of usersvc")
	flag.StringVar(&c.orderURL, "order-url", "https://127.0.0.1:9443", "base URL of ordersvc")
	flag.StringVar(&userID, "user-id", "spiffe://palisade.local/svc/user", "SPIFFE ID usersvc must present")
	flag.StringVar(&orderID, "order-id", "spiffe://palisade.local/svc/order", "SPIFFE ID ordersvc must present")
	flag.StringVar(&c.passwords, "passwords", "", "usersvc's --demo-passwords file (alice logs in)")
	flag.IntVar(&c.rotations, "rotations", 2, "rotations to see of each certificate: ordersvc's, usersvc's and the caller's own")
	flag.IntVar(&c.workers, "workers", 2, "workers calling CreateOrder, each one call after another")
	flag.DurationVar(&c.timeout, "timeout", 8*time.Minute, "give up when the rotations have not all been seen by then")
	flag.DurationVar(&c.probeInterval, "probe-interval", time.Second, "how often to read the certificate each service serves")
	flag.Parse()
	if c.socket == "" || c.passwords == "" {
		return c, errors.New("--socket and --passwords are required")
	}
	var err error
	if c.userID, err = spiffeid.Parse(userID); err != nil {
		return c, fmt.Errorf("--user-id: %w", err)
	}
	if c.orderID, err = spiffeid.Parse(orderID); err != nil {
		return c, fmt.Errorf("--order-id: %w", err)
	}
	return c, nil
}

func run() error {
	c, err := parseFlags()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	src, err := mtls.NewWorkloadAPISource(waitCtx, c.socket, mtls.WithLogger(logger))
	cancel()
	if err != nil {
		return fmt.Errorf("identity from %s: %w", c.socket, err)
	}
	defer src.Close()
	fmt.Printf("caller: %s from the Workload API\n", src.ID())

	passwords, err := user.ReadDemoPasswords(c.passwords)
	if err != nil {
		return err
	}
	auth, err := rpc.NewClient(userv1connect.NewAuthServiceClient, c.userURL, src, rpc.WithServerID(c.userID.String()))
	if err != nil {
		return fmt.Errorf("auth client: %w", err)
	}
	// The token outlives the run: the run tests certificates, not tokens.
	login, err := auth.Login(ctx, &userv1.LoginRequest{Username: "alice", Password: passwords["alice"], TtlSeconds: int64((c.timeout + time.Minute).Seconds())})
	if err != nil {
		return fmt.Errorf("login alice: %w", err)
	}
	token := login.GetAccessToken()
	orders, err := rpc.NewClient(orderv1connect.NewOrderServiceClient, c.orderURL, src,
		rpc.WithServerID(c.orderID.String()),
		rpc.WithTokenSource(func(context.Context) (string, error) { return token, nil }))
	if err != nil {
		return fmt.Errorf("order client: %w", err)
	}

	watches := []*watch{
		{name: "ordersvc", serial: probe(src, c.orderURL, c.orderID)},
		{name: "usersvc", serial: probe(src, c.userURL, c.userID)},
		{name: "caller", serial: ownSerial(src)},
	}
	start := time.Now()
	for _, w := range watches {
		if err := w.observe(start); err != nil {
			return fmt.Errorf("%s certificate: %w", w.name, err)
		}
	}

	runCtx, finish := context.WithCancel(ctx)
	defer finish()
	var calls, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for w := range c.workers {
		wg.Go(func() {
			for i := 0; runCtx.Err() == nil; i++ {
				callCtx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), 10*time.Second)
				_, err := orders.CreateOrder(callCtx, &orderv1.CreateOrderRequest{
					UserId: "alice", Items: []*orderv1.LineItem{{Sku: "spire-e2e-" + strconv.Itoa(w), Quantity: int32(i%9 + 1)}},
				})
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					failMu.Lock()
					failures = append(failures, fmt.Sprintf("%s %v", time.Since(start).Round(time.Millisecond), err))
					failMu.Unlock()
				}
			}
		})
	}

	deadline := time.NewTimer(c.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(c.probeInterval)
	defer tick.Stop()
	var timedOut bool
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-deadline.C:
			timedOut = true
			break loop
		case <-tick.C:
		}
		done := true
		for _, w := range watches {
			if err := w.observe(start); err != nil {
				// A probe failing is reported, not fatal: the calls are the test.
				fmt.Printf("%6.1fs %s: probe failed: %v\n", time.Since(start).Seconds(), w.name, err)
			}
			done = done && len(w.changes) >= c.rotations
		}
		if done {
			break
		}
	}
	finish()
	wg.Wait()
	elapsed := time.Since(start)

	fmt.Printf("ran %s: %d CreateOrder calls (%.0f/s, %d workers), %d failed\n",
		elapsed.Round(100*time.Millisecond), calls.Load(), float64(calls.Load())/elapsed.Seconds(), c.workers, failed.Load())
	for _, w := range watches {
		fmt.Printf("  %-8s rotations seen: %d (%s)\n", w.name, len(w.changes), w.summary())
	}
	for i, f := range failures {
		if i == 10 {
			fmt.Printf("  … %d more failures\n", len(failures)-10)
			break
		}
		fmt.Println("  failed:", f)
	}
	switch {
	case ctx.Err() != nil:
		return errors.New("interrupted")
	case failed.Load() > 0:
		return fmt.Errorf("%d of %d calls failed", failed.Load(), calls.Load())
	case timedOut:
		return fmt.Errorf("fewer than %d rotations of every certificate within %s", c.rotations, c.timeout)
	}
	fmt.Printf("PASS: %d rotations of each certificate, %d calls, failed=0\n", c.rotations, calls.Load())
	return nil
}

// cert is what a watch reads: the serial and validity of a certificate.
type cert struct {
	serial              string
	notBefore, notAfter time.Time
}

// watch follows one certificate and records each change of its serial.
type watch struct {
	name    string
	serial  func() (cert, error)
	first   cert
	last    cert
	changes []string // "at 61.0s: serial → serial (valid 120s)"
}

func (w *watch) observe(start time.Time) error {
	c, err := w.serial()
	if err != nil {
		return err
	}
	switch {
	case w.last.serial == "":
		w.first = c
		fmt.Printf("%6.1fs %s: serial %s, valid %s until %s\n", time.Since(start).Seconds(), w.name, c.serial,
			c.notAfter.Sub(c.notBefore).Round(time.Second), c.notAfter.UTC().Format(time.TimeOnly))
	case c.serial != w.last.serial:
		at := time.Since(start)
		w.changes = append(w.changes, fmt.Sprintf("%.0fs", at.Seconds()))
		fmt.Printf("%6.1fs %s: rotated, serial %s → %s, the old one %s into its %s lifetime\n", at.Seconds(), w.name,
			w.last.serial, c.serial, time.Now().Sub(w.last.notBefore).Round(time.Second), w.last.notAfter.Sub(w.last.notBefore).Round(time.Second))
	}
	w.last = c
	return nil
}

func (w *watch) summary() string {
	if len(w.changes) == 0 {
		return "none"
	}
	s := "at"
	for _, c := range w.changes {
		s += " " + c
	}
	return s
}

// probe returns a function that makes a TLS handshake with the server at
// baseURL, as the caller, checking that it presents id, and reads the
// certificate it served.
func probe(src mtls.Source, baseURL string, id spiffeid.ID) func() (cert, error) {
	return func() (cert, error) {
		cfg, err := mtls.ClientConfigForID(src, id, "h2")
		if err != nil {
			return cert{}, err
		}
		u, err := url.Parse(baseURL)
		if err != nil {
			return cert{}, err
		}
		addr := u.Host
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return cert{}, err
		}
		defer conn.Close()
		leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		return cert{serial: short(leaf.SerialNumber.Text(16)), notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}, nil
	}
}

// ownSerial reads the caller's current SVID.
func ownSerial(src mtls.Source) func() (cert, error) {
	return func() (cert, error) {
		c, err := src.Certificate()
		if err != nil {
			return cert{}, err
		}
		return cert{serial: short(c.Leaf.SerialNumber.Text(16)), notBefore: c.Leaf.NotBefore, notAfter: c.Leaf.NotAfter}, nil
	}
}

// short returns the first 12 hex digits of a serial: SPIRE's are random
// 128-bit numbers, and 12 digits tell them apart.
func short(serial string) string {
	if len(serial) > 12 {
		return serial[:12]
	}
	return serial
}
