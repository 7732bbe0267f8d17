package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/internal/histogram"
)

// TestRun measures every configuration briefly and checks that the report
// holds what it says: a row per configuration and protocol, every call
// successful, the callers spread over exactly the connections asked for,
// and the figures consistent with each other.
func TestRun(t *testing.T) {
	t.Parallel()
	o := Options{Duration: 100 * time.Millisecond, Warmup: 20 * time.Millisecond, Rounds: 2, Concurrency: 4, Connections: 2, Users: 20}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rep.Rows {
		got = append(got, r.Config+"/"+r.Protocol)
	}
	want := []string{"h2c/connect", "h2c/grpc", "tls/connect", "tls/grpc", "mtls/connect", "mtls/grpc",
		"mtls+bearer/connect", "mtls+bearer/grpc", "mtls+jwt/connect", "mtls+jwt/grpc", "mtls+jwt+opa/connect", "mtls+jwt+opa/grpc", "grpcgo-mtls+jwt+opa/grpc"}
	if !slices.Equal(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	if n := rep.FailedCalls(); n != 0 {
		t.Fatalf("%d calls failed: %+v", n, rep.Rows)
	}
	for _, c := range Configs() {
		if rep.Connections[c] != 2 {
			t.Errorf("%s accepted %d connections, want 2", c, rep.Connections[c])
		}
	}
	if len(rep.Preflight) != len(want) {
		t.Errorf("preflight lines: %q", rep.Preflight)
	}
	for _, r := range rep.Rows {
		if r.Calls == 0 || r.RPS <= 0 || r.P50us <= 0 || r.P50us > r.P99us || r.AllocsPerCall <= 0 || r.BytesPerCall <= 0 ||
			r.CPUusPerCall == nil || *r.CPUusPerCall <= 0 || len(r.RoundsRPS) != 2 || r.Concurrency != 4 || r.NewConnections != 0 {
			t.Errorf("implausible row %+v", r)
		}
		if r.RPSvsMTLS == nil || r.P99vsMTLS == nil {
			t.Errorf("%s/%s has no ratio against mtls", r.Config, r.Protocol)
		}
		if r.Config == ConfigMTLS && (*r.RPSvsMTLS != 1 || *r.P99vsMTLS != 1) {
			t.Errorf("mtls against itself: %v %v", *r.RPSvsMTLS, *r.P99vsMTLS)
		}
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var decoded []map[string]any
	if err := json.Unmarshal(js.Bytes(), &decoded); err != nil || len(decoded) != len(want) {
		t.Fatalf("JSON: %v, %d rows", err, len(decoded))
	}
	for _, key := range []string{"config", "protocol", "concurrency", "rps", "p50_us", "p99_us", "allocs_per_call", "bytes_per_call", "cpu_us_per_call", "rps_vs_mtls", "p99_vs_mtls"} {
		if _, ok := decoded[0][key]; !ok {
			t.Errorf("JSON rows lack %q: %v", key, decoded[0])
		}
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"| config | protocol | concurrency | rps |", "| grpcgo-mtls+jwt+opa | grpc | 4 |", "20 distinct users",
		"4 concurrent callers over 2 connections", "mtls+jwt+opa/grpc: own id → ok; forged token → unauthenticated; another user's id → permission_denied",
		"mtls+jwt+opa/connect rps ≥ 0.85× mtls/connect", "mtls+jwt+opa/grpc rps ≥ 1.50× grpcgo-mtls+jwt+opa/grpc"} {
		if !strings.Contains(md.String(), s) {
			t.Errorf("markdown lacks %q:\n%s", s, md.String())
		}
	}
	if strings.Contains(md.String(), "WARNING") {
		t.Errorf("markdown warns of failures:\n%s", md.String())
	}
}

// TestPreflightRefusesWeakChains: a configuration whose security is not
// what its name says is refused before it is measured.
func TestPreflightRefusesWeakChains(t *testing.T) {
	t.Parallel()
	fx, err := newFixture(2, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Connections: 1, Concurrency: 1, Protocols: []string{ProtocolConnect}}.withDefaults()
	cases := map[string]struct {
		start, claim string
		want         string
	}{
		"no policy behind the full chain's name":     {start: ConfigMTLSJWT, claim: ConfigFull, want: "another user's id: got ok, want permission_denied"},
		"no token verification behind mtls+jwt":      {start: ConfigMTLS, claim: ConfigMTLSJWT, want: "forged token: got ok, want unauthenticated"},
		"no client certificate required behind mtls": {start: ConfigTLS, claim: ConfigMTLS, want: "no client certificate: got ok, want refused"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tg, err := startConnect(fx, c.start, o)
			if err != nil {
				t.Fatal(err)
			}
			defer tg.close()
			tg.config = c.claim
			tg.tokens = c.claim == ConfigMTLSJWT || c.claim == ConfigFull
			tg.verifies = tg.tokens
			line, err := preflight(context.Background(), fx, tg, ProtocolConnect)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("preflight = %q, %v; want an error with %q", line, err, c.want)
			}
		})
	}
}

// TestFailedCallsAreFlagged: calls that fail or answer for another user are
// counted by code, and the report says its figures are not valid.
func TestFailedCallsAreFlagged(t *testing.T) {
	t.Parallel()
	fx := &fixture{ids: []string{"a", "b"}, auth: []string{"", ""}}
	o := Options{Duration: 50 * time.Millisecond, Concurrency: 2, Connections: 2, Users: 2}.withDefaults()
	o.Configs, o.Protocols = []string{ConfigMTLS}, []string{ProtocolConnect}
	failing := &target{config: ConfigMTLS, calls: map[string][]getUserFunc{ProtocolConnect: {
		func(context.Context, string, string) (string, error) {
			return "", connect.NewError(connect.CodeUnavailable, errors.New("server gone"))
		},
		func(context.Context, string, string) (string, error) { return "somebody", nil },
	}}}
	r := &runner{o: o, fx: fx, hists: []*histogram.Histogram{new(histogram.Histogram), new(histogram.Histogram)}}
	s := &series{cpuKnown: true}
	if err := r.window(context.Background(), failing, ProtocolConnect, o.Duration, s, true); err != nil {
		t.Fatal(err)
	}
	if s.calls != 0 || s.errors["unavailable"] == 0 || s.errors["wrong_answer"] == 0 {
		t.Fatalf("calls %d, errors %v", s.calls, s.errors)
	}
	rep := &Report{Options: o, Rows: rows(o, o.pairs(), map[pair]*series{{ConfigMTLS, ProtocolConnect}: s})}
	if rep.FailedCalls() != s.errors["unavailable"]+s.errors["wrong_answer"] {
		t.Fatalf("FailedCalls %d, errors %v", rep.FailedCalls(), s.errors)
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"WARNING", "| mtls ⚠ |", "unavailable: ", "first: unavailable: server gone"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
}

func TestOptionsRefused(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		o    Options
		want string
	}{
		"negative duration":        {Options{Duration: -time.Second}, "duration -1s is negative"},
		"negative warm-up":         {Options{Warmup: -time.Second}, "warm-up -1s is negative"},
		"negative rounds":          {Options{Rounds: -1}, "rounds must be at least 1"},
		"negative concurrency":     {Options{Concurrency: -1}, "concurrency must be at least 1"},
		"more connections":         {Options{Concurrency: 4, Connections: 5}, "connections must be between 1 and the concurrency (4), not 5"},
		"negative users":           {Options{Users: -3}, "users must be at least 1"},
		"unknown configuration":    {Options{Configs: []string{"mtls+magic"}}, `unknown configuration "mtls+magic"`},
		"unknown protocol":         {Options{Protocols: []string{"grpcweb"}}, `unknown protocol "grpcweb"`},
		"unknown log mode":         {Options{ServerLog: "stdout"}, `server log "stdout"`},
		"grpc-go without gRPC":     {Options{Configs: []string{ConfigGRPCGo}, Protocols: []string{ProtocolConnect}}, "nothing to measure"},
		"several problems at once": {Options{Rounds: -1, Users: -1}, "users must be at least 1"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rep, err := Run(context.Background(), c.o)
			if err == nil || rep != nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Run = %v, %v; want an error with %q", rep, err, c.want)
			}
		})
	}
}

// TestRoundOrder: every round measures every pair once, and over an even
// number of rounds every pair's positions add up to the same sum, so a
// linear drift weighs on each alike.
func TestRoundOrder(t *testing.T) {
	t.Parallel()
	pairs := Options{}.withDefaults().pairs()
	sums := map[pair]int{}
	for r := range 4 {
		order := roundOrder(pairs, r)
		if len(order) != len(pairs) {
			t.Fatalf("round %d: %v", r, order)
		}
		for i, p := range order {
			sums[p] += i
		}
	}
	for _, s := range sums {
		if s != sums[pairs[0]] {
			t.Fatalf("position sums differ: %v", sums)
		}
	}
	if len(sums) != len(pairs) {
		t.Fatalf("pairs measured: %v", sums)
	}
}

func TestChecks(t *testing.T) {
	t.Parallel()
	row := func(config, protocol string, rps, p99 float64) Row {
		return Row{Config: config, Protocol: protocol, RPS: rps, P99us: p99}
	}
	rep := &Report{Rows: []Row{
		row(ConfigMTLS, ProtocolConnect, 10000, 1000),
		row(ConfigFull, ProtocolConnect, 9000, 1300),
		row(ConfigMTLS, ProtocolGRPC, 10000, 1000),
		row(ConfigFull, ProtocolGRPC, 8000, 1100),
		row(ConfigGRPCGo, ProtocolGRPC, 5000, 3000),
	}}
	rep.Rows[3].Errors = map[string]uint64{"unavailable": 1}
	var got []string
	for _, c := range rep.Checks() {
		got = append(got, c.Status)
	}
	// connect: rps 0.9 PASS, p99 1.3 FAIL; grpc: rps 0.8 FAIL, p99 1.1 but
	// calls failed FAIL; vs grpc-go: connect 1.8 PASS, grpc 1.6 but failed.
	want := []string{"PASS", "FAIL", "FAIL", "FAIL", "PASS", "FAIL"}
	if !slices.Equal(got, want) {
		t.Fatalf("checks %v, want %v", got, want)
	}
	rep.Rows[0].RoundsRPS, rep.Rows[1].RoundsRPS = []float64{10000, 8000, 12000}, []float64{9000, 7600, 9600}
	if d := rep.Checks()[0].Detail; !strings.HasSuffix(d, "; round by round 0.80–0.95×, median 0.90×") {
		t.Errorf("connect rps check %q: want the round-by-round ratios 0.90, 0.95, 0.80", d)
	}
	rep.Rows = rep.Rows[:2]
	for _, c := range rep.Checks()[2:] {
		if c.Status != "SKIP" {
			t.Errorf("%+v, want SKIP", c)
		}
	}
}

// TestPrimeReachesEveryUserAndConnection: before measuring, every user has
// called once over each protocol (so every token is in the server's cache,
// as in a steady state) and every connection has been used.
func TestPrimeReachesEveryUserAndConnection(t *testing.T) {
	t.Parallel()
	fx := &fixture{}
	for u := range 37 {
		fx.ids = append(fx.ids, fmt.Sprintf("u%d", u))
		fx.auth = append(fx.auth, "Bearer t"+fx.ids[u])
	}
	var mu sync.Mutex
	seen := map[string]int{}
	call := func(conn int) getUserFunc {
		return func(_ context.Context, id, auth string) (string, error) {
			if auth != "Bearer t"+id {
				return "", fmt.Errorf("user %s sent %q", id, auth)
			}
			mu.Lock()
			seen[fmt.Sprintf("%s conn %d", id, conn)]++
			seen[id]++
			mu.Unlock()
			return id, nil
		}
	}
	tg := &target{config: ConfigFull, tokens: true, calls: map[string][]getUserFunc{
		ProtocolConnect: {call(0), call(1), call(2)},
		ProtocolGRPC:    {call(0), call(1), call(2)},
	}}
	if err := prime(context.Background(), fx, tg, 4); err != nil {
		t.Fatal(err)
	}
	for _, id := range fx.ids {
		if seen[id] < 2 {
			t.Errorf("%s called %d times, want once per protocol", id, seen[id])
		}
	}
	for k := range 3 {
		if seen[fmt.Sprintf("u%d conn %d", k, k)] == 0 {
			t.Errorf("connection %d not used first by u%d", k, k)
		}
	}

	tg.calls[ProtocolGRPC][1] = func(context.Context, string, string) (string, error) { return "somebody", nil }
	if err := prime(context.Background(), fx, tg, 4); err == nil || !strings.Contains(err.Error(), "answer is for another user") {
		t.Fatalf("prime with a wrong answer: %v", err)
	}
}
