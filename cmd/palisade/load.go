package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/loadgen"
	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
	"github.com/palisade-rpc/palisade/proto/order/v1/orderv1connect"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/services/sample"
	"github.com/palisade-rpc/palisade/services/user"
)

const loadDescription = `Drive calls through the full chain — mTLS, token verification, OPA
policy, handler — and report calls, errors by code, calls/s and latency
percentiles. Half the calls are UserService.GetUser (a user reading their own
record), half OrderService.CreateOrder (which makes the order service
exchange the user's token and ask the user service). Calls go over
--connections HTTP/2 connections per service, each user with their own
certificate-bound token.

By default the sample services run inside this command, on 127.0.0.1, with
the default policies and --users customers who log in first. With
--user-url and --order-url it targets running services instead (make up),
as the demo users alice and bob (passwords from <home>/demo-passwords.json,
client certificate <home>/certs/cli.pem).

--soak DURATION runs for that long instead of --calls, against the
in-process services, and reports this process's RSS (VmRSS) and goroutine
count after a warm-up and at the end (each after a GC); it fails if either
grew past --max-rss-growth or --max-goroutine-growth.

The command fails if any call failed.`

// loadReport is what `palisade load --json` prints.
type loadReport struct {
	Target         string             `json:"target"`
	Users          int                `json:"users"`
	Concurrency    int                `json:"concurrency"`
	Connections    int                `json:"connections"`
	Calls          int                `json:"calls"`
	Errors         map[string]int     `json:"errors"`
	FirstErrors    map[string]string  `json:"first_errors,omitempty"`
	ElapsedSeconds float64            `json:"elapsed_seconds"`
	CallsPerSecond float64            `json:"calls_per_second"`
	LatencyMS      map[string]float64 `json:"latency_ms"`
	Soak           *soakReport        `json:"soak,omitempty"`
}

// soakReport is the memory and goroutines of this process over a soak.
type soakReport struct {
	Duration           string         `json:"duration"`
	Start              processStats   `json:"start"`
	End                processStats   `json:"end"`
	Samples            []processStats `json:"samples"`
	MaxRSSGrowthKiB    int64          `json:"max_rss_growth_kib"`
	MaxGoroutineGrowth int            `json:"max_goroutine_growth"`
	Passed             bool           `json:"passed"`
}

// processStats is this process's resident memory and goroutines.
type processStats struct {
	AtSeconds  float64 `json:"at_seconds"`
	RSSKiB     int64   `json:"rss_kib"`
	HeapKiB    uint64  `json:"heap_kib"`
	Goroutines int     `json:"goroutines"`
}

func loadCmd(args []string) error {
	fs := newFlagSet("palisade load", loadDescription)
	calls := fs.Int("calls", 100_000, "number of `calls` to make")
	concurrency := fs.Int("concurrency", 64, "calls in flight at once (`n`)")
	connections := fs.Int("connections", 8, "HTTP/2 connections per service (`n`)")
	users := fs.Int("users", 1000, "customers to create and log in (in-process services only) (`n`)")
	soak := fs.Duration("soak", 0, "run for this `duration` instead of --calls and check memory and goroutines (in-process only)")
	warmup := fs.Int("warmup", 5000, "calls before a soak's first measurement (`n`)")
	maxRSS := fs.Int64("max-rss-growth", 16<<10, "largest RSS growth a soak tolerates, in `KiB`")
	maxGoroutines := fs.Int("max-goroutine-growth", 16, "largest goroutine count growth a soak tolerates (`n`)")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	userURL := fs.String("user-url", "", "base `URL` of a running user service (with --order-url)")
	orderURL := fs.String("order-url", "", "base `URL` of a running order service (with --user-url)")
	logLevel := fs.String("log-level", "error", "`level` of the in-process services' log on stderr: debug, info, warn or error")
	home := fs.String("home", palisadeHome(), "demo state `directory` for --user-url/--order-url: certs/ and demo-passwords.json (default $PALISADE_HOME or .palisade)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *concurrency < 1 || *connections < 1:
		return errors.New("--concurrency and --connections must be at least 1")
	case *soak < 0 || (*soak == 0 && *calls < 1):
		return errors.New("--calls must be at least 1, or --soak a positive duration")
	case (*userURL == "") != (*orderURL == ""):
		return errors.New("--user-url and --order-url go together")
	case *soak > 0 && *userURL != "":
		return errors.New("--soak measures this process, so it needs the in-process services (no --user-url)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	target, err := newLoadTarget(ctx, *userURL, *orderURL, *home, *users, level)
	if err != nil {
		return err
	}
	defer target.close()
	rep := &loadReport{Target: target.name, Users: len(target.creds), Concurrency: *concurrency, Connections: *connections}
	call, err := target.mix(*connections)
	if err != nil {
		return err
	}
	opts := loadgen.Options{Calls: *calls, Concurrency: *concurrency}
	if *soak > 0 {
		opts = loadgen.Options{Duration: *soak, Concurrency: *concurrency}
		warm, err := loadgen.Run(ctx, loadgen.Options{Calls: *warmup, Concurrency: *concurrency}, call)
		if err != nil {
			return err
		}
		if warm.ErrorCount() > 0 {
			return fmt.Errorf("warm-up failed:\n%s", warm)
		}
		rep.Soak = &soakReport{Duration: soak.String(), MaxRSSGrowthKiB: *maxRSS, MaxGoroutineGrowth: *maxGoroutines}
	}
	res, err := runMeasured(ctx, opts, call, rep.Soak, *jsonOut)
	if err != nil {
		return err
	}
	rep.Calls, rep.Errors, rep.FirstErrors = res.Calls, res.Errors, res.FirstErrors
	rep.ElapsedSeconds, rep.CallsPerSecond = res.Elapsed.Seconds(), res.CallsPerSecond()
	rep.LatencyMS = map[string]float64{}
	for name, d := range map[string]time.Duration{
		"p50": res.Latency.Quantile(0.5), "p90": res.Latency.Quantile(0.9), "p99": res.Latency.Quantile(0.99), "max": res.Latency.Max(),
	} {
		rep.LatencyMS[name] = float64(d.Microseconds()) / 1000
	}
	if *jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Printf("load: %s, %d users, concurrency %d, %d connections per service\n%s\n", rep.Target, rep.Users, rep.Concurrency, rep.Connections, res)
		if s := rep.Soak; s != nil {
			fmt.Printf("soak %s: RSS %d KiB -> %d KiB (%+d, bound %d); goroutines %d -> %d (%+d, bound %d)\n",
				s.Duration, s.Start.RSSKiB, s.End.RSSKiB, s.End.RSSKiB-s.Start.RSSKiB, s.MaxRSSGrowthKiB,
				s.Start.Goroutines, s.End.Goroutines, s.End.Goroutines-s.Start.Goroutines, s.MaxGoroutineGrowth)
		}
	}
	if n := res.ErrorCount(); n > 0 {
		return fmt.Errorf("%d of %d calls failed", n, res.Calls)
	}
	if rep.Soak != nil && !rep.Soak.Passed {
		return errors.New("soak: memory or goroutines grew past the bound")
	}
	return nil
}

// runMeasured runs the load; for a soak it measures the process before and
// after (after a GC each time) and every 15 s in between.
func runMeasured(ctx context.Context, opts loadgen.Options, call loadgen.Call, soak *soakReport, quiet bool) (*loadgen.Result, error) {
	if soak == nil {
		return loadgen.Run(ctx, opts, call)
	}
	start := time.Now()
	var err error
	if soak.Start, err = measure(start, true); err != nil {
		return nil, err
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(15 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
				if s, err := measure(start, false); err == nil {
					soak.Samples = append(soak.Samples, s)
					if !quiet {
						fmt.Fprintf(os.Stderr, "soak %3.0fs: RSS %d KiB, heap %d KiB, goroutines %d\n", s.AtSeconds, s.RSSKiB, s.HeapKiB, s.Goroutines)
					}
				}
			}
		}
	})
	res, runErr := loadgen.Run(ctx, opts, call)
	stopSampling()
	wg.Wait()
	if runErr != nil {
		return nil, runErr
	}
	// Let the servers' goroutines of the last calls wind down.
	time.Sleep(time.Second)
	if soak.End, err = measure(start, true); err != nil {
		return nil, err
	}
	soak.Passed = soak.End.RSSKiB-soak.Start.RSSKiB <= soak.MaxRSSGrowthKiB &&
		soak.End.Goroutines-soak.Start.Goroutines <= soak.MaxGoroutineGrowth
	return res, nil
}

// measure reads this process's RSS from /proc/self/status and its
// goroutines, after a GC that returns freed memory to the OS when gc is set.
func measure(start time.Time, gc bool) (processStats, error) {
	if gc {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err := readRSS()
	if err != nil {
		return processStats{}, err
	}
	return processStats{AtSeconds: time.Since(start).Seconds(), RSSKiB: rss, HeapKiB: ms.HeapAlloc >> 10, Goroutines: runtime.NumGoroutine()}, nil
}

func readRSS() (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read RSS: %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("read RSS: no VmRSS in /proc/self/status")
}

// loadTarget is what the load runs against: the two services' URLs, a
// client certificate and the users' tokens.
type loadTarget struct {
	name              string
	userURL, orderURL string
	client            mtls.Source
	creds             []sample.Credential
	close             func()
}

func newLoadTarget(ctx context.Context, userURL, orderURL, home string, users int, level slog.Level) (*loadTarget, error) {
	if userURL != "" {
		return runningTarget(ctx, userURL, orderURL, home)
	}
	if users < 1 {
		return nil, errors.New("--users must be at least 1")
	}
	dir, err := os.MkdirTemp("", "palisade-load-")
	if err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	sys, err := sample.Start(ctx, sample.Options{Dir: dir, Users: users, Logger: logger})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	cleanup := func() {
		if err := sys.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "palisade load: stopping the services:", err)
		}
		_ = os.RemoveAll(dir)
	}
	creds, err := sys.Login(ctx, 16)
	if err != nil {
		cleanup()
		return nil, err
	}
	return &loadTarget{name: "in-process sample services", userURL: sys.UserURL, orderURL: sys.OrderURL, client: sys.Client, creds: creds, close: cleanup}, nil
}

// runningTarget logs the demo users alice and bob in at running services.
func runningTarget(ctx context.Context, userURL, orderURL, home string) (*loadTarget, error) {
	certDir := filepath.Join(home, "certs")
	src, err := mtls.NewFileSource(filepath.Join(certDir, "cli.pem"), filepath.Join(certDir, "cli-key.pem"), filepath.Join(certDir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	passwords, err := user.ReadDemoPasswords(filepath.Join(home, "demo-passwords.json"))
	if err != nil {
		return nil, err
	}
	auth, err := rpc.NewClient(userv1connect.NewAuthServiceClient, userURL, src)
	if err != nil {
		return nil, err
	}
	t := &loadTarget{name: "running services " + userURL + " and " + orderURL, userURL: userURL, orderURL: orderURL, client: src, close: func() {}}
	for _, name := range []string{"alice", "bob"} {
		res, err := auth.Login(ctx, &userv1.LoginRequest{Username: name, Password: passwords[name]})
		if err != nil {
			return nil, fmt.Errorf("login %s: %w", name, err)
		}
		t.creds = append(t.creds, sample.Credential{UserID: name, Token: res.GetAccessToken()})
	}
	return t, nil
}

type tokenKey struct{}

// mix returns the call the load makes: even calls GetUser, odd calls
// CreateOrder, users in turn, worker w on connection w mod connections.
func (t *loadTarget) mix(connections int) (loadgen.Call, error) {
	tokenOf := rpc.WithTokenSource(func(ctx context.Context) (string, error) {
		tok, _ := ctx.Value(tokenKey{}).(string)
		return tok, nil
	})
	usersClients := make([]userv1connect.UserServiceClient, connections)
	orderClients := make([]orderv1connect.OrderServiceClient, connections)
	for i := range connections {
		var err error
		// Each client has its own HTTP transport, so its own connection.
		if usersClients[i], err = rpc.NewClient(userv1connect.NewUserServiceClient, t.userURL, t.client, tokenOf); err != nil {
			return nil, err
		}
		if orderClients[i], err = rpc.NewClient(orderv1connect.NewOrderServiceClient, t.orderURL, t.client, tokenOf); err != nil {
			return nil, err
		}
	}
	return func(ctx context.Context, w, i int) error {
		cred := t.creds[(i/2)%len(t.creds)]
		ctx = context.WithValue(ctx, tokenKey{}, cred.Token)
		conn := w % connections
		if i%2 == 0 {
			res, err := usersClients[conn].GetUser(ctx, &userv1.GetUserRequest{Id: cred.UserID})
			if err == nil && res.GetUser().GetId() != cred.UserID {
				return fmt.Errorf("GetUser(%s) answered %s", cred.UserID, res.GetUser().GetId())
			}
			return err
		}
		_, err := orderClients[conn].CreateOrder(ctx, &orderv1.CreateOrderRequest{
			UserId: cred.UserID, Items: []*orderv1.LineItem{{Sku: "load-" + strconv.Itoa(i%50), Quantity: 1}},
		})
		return err
	}, nil
}
