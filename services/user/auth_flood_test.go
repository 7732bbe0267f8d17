//go:build linux

package user_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/services/user"
)

// TestLoginFloodMemoryAndLatency is issue 13's memory reproduction: 40
// concurrent logins for unknown users, each an argon2id check of 64 MiB
// with the default parameters, from a workload whose failure budget is
// raised so that only the bound on password checks holds them back. The
// process's peak RSS may grow by at most MaxConcurrentChecks checks'
// memory, plus a margin; and GetUser from another workload keeps a p99
// under 250 ms meanwhile.
//
// Not parallel: it measures the whole process, while the parallel tests
// wait.
func TestLoginFloodMemoryAndLatency(t *testing.T) {
	const (
		flood  = 40
		maxP99 = 250 * time.Millisecond
		margin = 64 << 20
	)
	params := password.DefaultParams()
	checks := user.DefaultMaxConcurrentChecks(params)
	f := newAuthFixtureWith(t, fixtureOptions{auth: user.AuthOptions{FailuresPerPeer: 1 << 20}, params: params})
	ctx := context.Background()

	// The reader logs in before the flood, as another workload.
	res, err := f.login(t, f.other, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}
	tok := res.GetAccessToken()
	users, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(f.other),
		rpc.WithTokenSource(func(context.Context) (string, error) { return tok, nil }))
	if err != nil {
		t.Fatal(err)
	}
	getUser := func() (time.Duration, error) {
		start := time.Now()
		_, err := users.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
		return time.Since(start), err
	}
	quiet := make([]time.Duration, 300)
	for i := range quiet {
		if quiet[i], err = getUser(); err != nil {
			t.Fatal(err)
		}
	}
	// The attacker waits as long as the server makes it.
	attacker, err := rpc.NewClient(userv1connect.NewAuthServiceClient, f.srv.URL, f.ca.Source(f.ca.Client("/client/attacker")),
		rpc.WithCallTimeout(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	login := func(username string) error {
		_, err := attacker.Login(ctx, &userv1.LoginRequest{Username: username, Password: "guess"})
		return err
	}

	// Checks one at a time first: under the race detector, memory that
	// is freed and allocated again grows the detector's shadow of it, which
	// it never returns, up to a plateau that one-at-a-time checks reach
	// within a few. The flood then measures the checks' memory rather than
	// the detector's.
	for i := range checks {
		if err := login(fmt.Sprint("warm-up-", i)); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("a warm-up login: %v", err)
		}
	}

	base := settledRSS(t)
	var (
		stop      = make(chan struct{})
		reader    sync.WaitGroup
		latencies []time.Duration
		readErr   error
	)
	reader.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			d, err := getUser()
			if err != nil {
				readErr = err
				return
			}
			latencies = append(latencies, d)
		}
	})
	floodStart := time.Now()
	errs := make([]error, flood)
	var wg sync.WaitGroup
	for i := range flood {
		wg.Go(func() { errs[i] = login(fmt.Sprint("nobody-", i)) })
	}
	wg.Wait()
	floodTime := time.Since(floodStart)
	close(stop)
	reader.Wait()
	peak := procStatus(t, "VmHWM")
	if readErr != nil {
		t.Fatalf("GetUser during the flood: %v", readErr)
	}

	checked, refused := 0, 0
	for _, err := range errs {
		switch connect.CodeOf(err) {
		case connect.CodeUnauthenticated:
			checked++
		case connect.CodeResourceExhausted:
			refused++
			checkRetryAfter(t, err, 1)
		default:
			t.Errorf("a login of the flood: %v", err)
		}
	}
	perCheck := int64(params.Memory) << 10
	growth, limit := peak-base, int64(checks)*perCheck+margin
	t.Logf("%d logins in %v: %d checked, %d refused (MaxConcurrentChecks %d)", flood, floodTime.Round(time.Millisecond), checked, refused, checks)
	t.Logf("RSS %d MiB before the flood, peak %d MiB: growth %d MiB (limit %d MiB)", base>>20, peak>>20, growth>>20, limit>>20)
	t.Logf("GetUser before the flood: %s", quantiles(quiet))
	t.Logf("GetUser during the flood: %s", quantiles(latencies))
	if checked == 0 || checked > checks || checked+refused != flood {
		t.Errorf("%d logins checked and %d refused, want 1 to %d checked and the rest refused", checked, refused, checks)
	}
	if growth > limit {
		t.Errorf("peak RSS grew by %d MiB, want at most %d MiB: %d checks of %d MiB, + %d MiB", growth>>20, limit>>20, checks, perCheck>>20, margin>>20)
	}
	if len(latencies) < 50 {
		t.Fatalf("only %d GetUser calls during the flood, want at least 50", len(latencies))
	}
	if p99 := percentile(latencies, 99); p99 > maxP99 {
		t.Errorf("GetUser p99 during the flood %v, want under %v", p99, maxP99)
	}
}

// settledRSS collects garbage, returns free memory to the OS, resets the
// peak RSS (VmHWM) to the current RSS and returns it.
func settledRSS(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	// proc(5), /proc/pid/clear_refs: 5 resets the peak resident set size.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("resetting the peak RSS: %v", err)
	}
	return procStatus(t, "VmRSS")
}

// procStatus returns a memory field of /proc/self/status, in bytes.
func procStatus(t *testing.T, field string) int64 {
	t.Helper()
	file, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(value), "kB")), 10, 64)
		if err != nil {
			t.Fatalf("/proc/self/status %s: %v", field, err)
		}
		return kb << 10
	}
	t.Fatalf("/proc/self/status has no %s", field)
	return 0
}

// percentile returns the p-th percentile of ds, which it sorts.
func percentile(ds []time.Duration, p int) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)*p/100, len(ds)-1)]
}

func quantiles(ds []time.Duration) string {
	return fmt.Sprintf("%d calls, p50 %v, p99 %v, max %v", len(ds),
		percentile(ds, 50).Round(time.Microsecond), percentile(ds, 99).Round(time.Microsecond), percentile(ds, 100).Round(time.Microsecond))
}
