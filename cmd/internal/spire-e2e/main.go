// Command spire-e2e is the caller of `make spire-e2e` (scripts/spire-e2e.sh):
// it takes its own identity from a SPIRE agent's Workload API, logs alice
// in at usersvc, and calls CreateOrder on ordersvc without a pause from
// several workers until it has seen the served certificate of ordersvc and
// of usersvc, and its own SVID, change --rotations times each, and for
// --settle after that; then it prints the figures and exits non-zero if any
// call failed, or if the rotations did not all happen within --timeout.
//
// The certificate a service serves is read by a handshake of its own every
// --probe-interval (a new connection: the calls' connections keep the
// certificates they were made with until they are drained).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/mtls/workloadapi"
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
	timeout, probeInterval, settle       time.Duration
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
	flag.DurationVar(&c.settle, "settle", 15*time.Second, "how long to go on calling once every certificate has rotated, over the rotated ones")
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
	src, err := workloadapi.NewSource(waitCtx, c.socket, workloadapi.WithLogger(logger))
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
	cl := &caller{src: src, passwords: passwords}
	if cl.authHTTP, err = rpc.NewHTTPClient(pinned{cl}, rpc.WithServerID(c.userID.String())); err != nil {
		return fmt.Errorf("auth client: %w", err)
	}
	if cl.ordersHTTP, err = rpc.NewHTTPClient(pinned{cl}, rpc.WithServerID(c.orderID.String())); err != nil {
		return fmt.Errorf("order client: %w", err)
	}
	if cl.auth, err = rpc.NewClient(userv1connect.NewAuthServiceClient, c.userURL, pinned{cl},
		rpc.WithServerID(c.userID.String()), rpc.WithHTTPClient(cl.authHTTP)); err != nil {
		return fmt.Errorf("auth client: %w", err)
	}
	orders, err := rpc.NewClient(orderv1connect.NewOrderServiceClient, c.orderURL, pinned{cl},
		rpc.WithServerID(c.orderID.String()), rpc.WithHTTPClient(cl.ordersHTTP),
		rpc.WithTokenSource(func(ctx context.Context) (string, error) {
			tok, _ := ctx.Value(tokenKey{}).(string)
			return tok, nil
		}))
	if err != nil {
		return fmt.Errorf("order client: %w", err)
	}
	if err := cl.refresh(ctx); err != nil {
		return err
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
	var created, refused, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	fail := func(what string, err error) {
		failed.Add(1)
		failMu.Lock()
		failures = append(failures, fmt.Sprintf("%.3fs %s: %v", time.Since(start).Seconds(), what, err))
		failMu.Unlock()
	}
	total := func() int64 { return created.Load() + refused.Load() + failed.Load() }
	var wg sync.WaitGroup
	for w := range c.workers {
		wg.Go(func() {
			for i := 0; runCtx.Err() == nil; i++ {
				// Even calls: alice orders for herself (ordersvc has her
				// cached). Odd calls: admin orders for a user who does not
				// exist, which ordersvc asks usersvc about every time, with
				// admin's token exchanged for a delegated one.
				who, forUser := "alice", "alice"
				if i%2 == 1 {
					who, forUser = "admin", fmt.Sprintf("nobody-%d-%d", w, i)
				}
				err := cl.call(runCtx, who, func(ctx context.Context) error {
					ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					_, err := orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{
						UserId: forUser, Items: []*orderv1.LineItem{{Sku: "spire-e2e-" + strconv.Itoa(w), Quantity: int32(i%9 + 1)}},
					})
					return err
				})
				switch {
				case errors.Is(err, context.Canceled) && runCtx.Err() != nil:
					// the run ended while this call waited for a login
				case errors.Is(err, errLogin):
					fail("login", err)
				case forUser == "alice" && err == nil:
					created.Add(1)
				case forUser != "alice" && connect.CodeOf(err) == connect.CodeFailedPrecondition && strings.Contains(err.Error(), "does not exist"):
					refused.Add(1)
				case err == nil:
					fail("CreateOrder for "+forUser, errors.New("answered OK for a user who does not exist"))
				default:
					fail("CreateOrder for "+forUser, err)
				}
			}
		})
	}

	deadline := time.NewTimer(c.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(c.probeInterval)
	defer tick.Stop()
	var timedOut bool
	var doneAt time.Time
	var callsAtDone int64
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
		if done && doneAt.IsZero() {
			doneAt, callsAtDone = time.Now(), total()
			fmt.Printf("%6.1fs every certificate rotated %d times; calling on for %s\n", time.Since(start).Seconds(), c.rotations, c.settle)
		}
		if !doneAt.IsZero() && time.Since(doneAt) >= c.settle {
			break
		}
	}
	finish()
	wg.Wait()
	elapsed := time.Since(start)

	calls := total()
	fmt.Printf("ran %s: %d CreateOrder calls (%.0f/s, %d workers), %d failed: %d orders created for alice; %d for a user who does not exist, refused as such once ordersvc had asked usersvc\n",
		elapsed.Round(100*time.Millisecond), calls, float64(calls)/elapsed.Seconds(), c.workers, failed.Load(), created.Load(), refused.Load())
	if !doneAt.IsZero() {
		fmt.Printf("  calls after the last rotation: %d\n", calls-callsAtDone)
	}
	fmt.Printf("  logins: %d rounds of alice and admin, one per certificate of the caller\n", cl.logins)
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
		return fmt.Errorf("%d of %d calls failed", failed.Load(), calls)
	case timedOut:
		return fmt.Errorf("fewer than %d rotations of every certificate within %s", c.rotations, c.timeout)
	}
	fmt.Printf("PASS: %d rotations of each certificate, %d calls, failed=0\n", c.rotations, calls)
	return nil
}

type tokenKey struct{}

var errLogin = errors.New("login")

// caller holds the caller's access tokens, alice's and admin's, and the
// certificate they are bound to. Palisade's tokens are certificate-bound
// (cnf.x5t#S256, RFC 8705): one is refused over a connection with any
// other certificate than the one that logged in. Under SPIRE the caller's
// certificate changes at every rotation, so it logs in again for each.
// The clients see the certificate through pinned, which changes only
// while no call is in flight (mu held for writing), together with the
// tokens, and their connections, all idle then, are closed with it: a
// call never presents a token bound to another certificate than the one
// its connection was made with. (A connection outlives the certificate it
// was made with, until the server drains it in the certificate's last
// minute, so without the closing the first Login after a rotation could
// go over a connection made with the previous one.)
type caller struct {
	src       mtls.Source // the Workload API's
	passwords map[string]string
	auth      userv1connect.AuthServiceClient
	// The clients' HTTP clients: their connections are closed at each
	// refresh.
	authHTTP, ordersHTTP *http.Client

	mu     sync.RWMutex // read by each call; written by refresh
	cert   atomic.Pointer[tls.Certificate]
	tokens map[string]string // by user name
	logins int
}

// pinned is the Source of the caller's clients: the caller's certificate
// of the moment, and the Workload API's bundle.
type pinned struct{ c *caller }

func (p pinned) Certificate() (*tls.Certificate, error) { return p.c.cert.Load(), nil }

func (p pinned) TrustBundle() (*x509.CertPool, error) { return p.c.src.TrustBundle() }

// call runs f with who's token in its context, under the read lock, after
// a refresh if the Workload API has rotated the certificate.
func (c *caller) call(ctx context.Context, who string, f func(context.Context) error) error {
	for {
		cur, err := c.src.Certificate()
		if err != nil {
			return err
		}
		c.mu.RLock()
		if cur == c.cert.Load() {
			defer c.mu.RUnlock()
			return f(context.WithValue(ctx, tokenKey{}, c.tokens[who]))
		}
		c.mu.RUnlock()
		if err := c.refresh(ctx); err != nil {
			return err
		}
	}
}

// refresh takes the Workload API's current certificate and logs alice and
// admin in with it, once no call is in flight.
func (c *caller) refresh(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, err := c.src.Certificate()
	if err != nil {
		return err
	}
	if cur == c.cert.Load() {
		return nil // another worker did it
	}
	c.cert.Store(cur)
	c.authHTTP.CloseIdleConnections()
	c.ordersHTTP.CloseIdleConnections()
	tokens := map[string]string{}
	for _, name := range []string{"alice", "admin"} {
		res, err := c.auth.Login(ctx, &userv1.LoginRequest{Username: name, Password: c.passwords[name]})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w %s: %w", errLogin, name, err)
		}
		tokens[name] = res.GetAccessToken()
	}
	c.tokens = tokens
	c.logins++
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
