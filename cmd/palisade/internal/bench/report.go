package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
)

// Report is what Run measured.
type Report struct {
	// Options are the options Run used, defaults filled in.
	Options Options
	// Rows has one row per configuration, protocol and client, in report
	// order.
	Rows []Row
	// Preflight has a line per row saying what its security checks saw.
	Preflight []string
	// Connections is how many connections each configuration's server had
	// accepted once every client had made its first call.
	Connections map[string]int64
	// LoadBefore and LoadAfter are the machine's load averages (1, 5, 15
	// minutes) when the measurement started and ended; empty where unknown.
	LoadBefore, LoadAfter string
	// SeparateProcesses says the servers ran in a process of their own, so
	// the rows' server and client figures are known apart.
	SeparateProcesses bool
}

// Row is the measurement of one configuration, protocol and client over
// all rounds. Allocations, bytes and CPU time are process-wide counters
// divided by the successful calls: the server process's (Server…), this
// process's, where the clients run (Client…), and their sum. With the
// servers in this process only the sum is known.
type Row struct {
	Config      string `json:"config"`
	Protocol    string `json:"protocol"`
	Client      string `json:"client"`
	Concurrency int    `json:"concurrency"`
	// RPS is successful calls per second over the measured windows.
	RPS float64 `json:"rps"`
	// P50us and P99us are latency quantiles in microseconds, over every
	// call of every round, as the client saw them.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// AllocsPerCall, BytesPerCall and CPUusPerCall are both sides' together
	// (CPUusPerCall is nil where CPU time is unknown).
	AllocsPerCall float64  `json:"allocs_per_call"`
	BytesPerCall  float64  `json:"bytes_per_call"`
	CPUusPerCall  *float64 `json:"cpu_us_per_call"`
	// The server's and the client's shares; nil with the servers in this
	// process.
	ServerAllocsPerCall *float64 `json:"server_allocs_per_call"`
	ClientAllocsPerCall *float64 `json:"client_allocs_per_call"`
	ServerCPUusPerCall  *float64 `json:"server_cpu_us_per_call"`
	ClientCPUusPerCall  *float64 `json:"client_cpu_us_per_call"`
	// RPSvsMTLS and P99vsMTLS compare the row with the bare mTLS row of
	// its server's stack (mtls for Connect, Palisade and nethttp-mtls,
	// grpcgo-mtls for grpc-go) over the same protocol with the same client:
	// RPSvsGRPCGoCache and P99vsGRPCGoCache with
	// grpcgo-mtls+jwt+opa+cache/grpc. Each is the median of the rounds'
	// ratios (a round measures every row once, so its two windows are close
	// in time); nil when the other row was not measured.
	RPSvsMTLS        *float64 `json:"rps_vs_mtls"`
	P99vsMTLS        *float64 `json:"p99_vs_mtls"`
	RPSvsGRPCGoCache *float64 `json:"rps_vs_grpcgo_cache"`
	P99vsGRPCGoCache *float64 `json:"p99_vs_grpcgo_cache"`
	// RoundsRPS and RoundsP99us are each round's throughput and p99, in
	// the order measured.
	RoundsRPS   []float64 `json:"rounds_rps"`
	RoundsP99us []float64 `json:"rounds_p99_us"`
	// Calls counts the successful measured calls.
	Calls uint64 `json:"calls"`
	// Errors and WarmupErrors count the failed calls by code (Connect code
	// names; "wrong_answer" for an answer about another user).
	Errors       map[string]uint64 `json:"errors"`
	WarmupErrors map[string]uint64 `json:"warmup_errors,omitempty"`
	// ErrorSamples holds the first error message of each code.
	ErrorSamples map[string]string `json:"error_samples,omitempty"`
	// NewConnections counts connections accepted while measuring: a client
	// that had to reconnect (0 when the distribution held).
	NewConnections int64   `json:"new_connections"`
	Users          int     `json:"users"`
	Connections    int     `json:"connections"`
	Rounds         int     `json:"rounds"`
	DurationS      float64 `json:"duration_s"`
}

// name is the row's pair name: config/protocol, the client in brackets
// when it is not the configuration's stack's own.
func (r *Row) name() string { return pair{r.Config, r.Protocol, r.Client}.String() }

// failed is the number of the row's failed calls, warm-up included.
func (r Row) failed() uint64 { return sumCounts(r.Errors, r.WarmupErrors) }

// sumCounts adds up the counts of every map.
func sumCounts(counts ...map[string]uint64) uint64 {
	var n uint64
	for _, m := range counts {
		for _, c := range m {
			n += c
		}
	}
	return n
}

func rows(o Options, pairs []pair, acc map[pair]*series) []Row {
	out := make([]Row, 0, len(pairs))
	for _, p := range pairs {
		s := acc[p]
		row := Row{
			Config: p.config, Protocol: p.protocol, Client: p.client, Concurrency: o.Concurrency,
			P50us:       round(s.hist.Quantile(0.50).Seconds()*1e6, 1),
			P99us:       round(s.hist.Quantile(0.99).Seconds()*1e6, 1),
			Calls:       s.calls,
			Errors:      s.errors,
			RoundsRPS:   make([]float64, len(s.roundsRPS)),
			RoundsP99us: make([]float64, len(s.roundsP99)),

			WarmupErrors: s.warmupErrors, ErrorSamples: s.samples, NewConnections: s.newConns,
			Users: o.Users, Connections: o.Connections, Rounds: o.Rounds, DurationS: o.Duration.Seconds(),
		}
		if row.Errors == nil {
			row.Errors = map[string]uint64{}
		}
		for i, v := range s.roundsRPS {
			row.RoundsRPS[i] = round(v, 1)
		}
		for i, v := range s.roundsP99 {
			row.RoundsP99us[i] = round(v.Seconds()*1e6, 1)
		}
		if s.elapsed > 0 {
			row.RPS = round(float64(s.calls)/s.elapsed.Seconds(), 1)
		}
		if s.calls > 0 {
			n := float64(s.calls)
			perCall := func(v float64, digits int) *float64 {
				r := round(v/n, digits)
				return &r
			}
			both := counters{mallocs: s.client.mallocs + s.server.mallocs, bytes: s.client.bytes + s.server.bytes, cpu: s.client.cpu + s.server.cpu}
			row.AllocsPerCall = *perCall(float64(both.mallocs), 1)
			row.BytesPerCall = *perCall(float64(both.bytes), 0)
			if s.cpuKnown {
				row.CPUusPerCall = perCall(both.cpu.Seconds()*1e6, 1)
			}
			if s.separate {
				row.ServerAllocsPerCall = perCall(float64(s.server.mallocs), 1)
				row.ClientAllocsPerCall = perCall(float64(s.client.mallocs), 1)
				if s.cpuKnown {
					row.ServerCPUusPerCall = perCall(s.server.cpu.Seconds()*1e6, 1)
					row.ClientCPUusPerCall = perCall(s.client.cpu.Seconds()*1e6, 1)
				}
			}
		}
		out = append(out, row)
	}
	ref := find(out, ConfigGRPCGoCache, ProtocolGRPC, ClientGRPCGo)
	for i := range out {
		r := &out[i]
		if base := find(out, specOf(r.Config).bare(), r.Protocol, r.Client); base != nil {
			r.RPSvsMTLS = medianRatio(r.RoundsRPS, base.RoundsRPS)
			r.P99vsMTLS = medianRatio(r.RoundsP99us, base.RoundsP99us)
		}
		if ref != nil {
			r.RPSvsGRPCGoCache = medianRatio(r.RoundsRPS, ref.RoundsRPS)
			r.P99vsGRPCGoCache = medianRatio(r.RoundsP99us, ref.RoundsP99us)
		}
	}
	return out
}

// ratios are the ratios of a to b round by round.
type ratios struct {
	median, lo, hi float64
	n              int
}

// roundRatios divides a by b round by round; ok is false unless both have
// the same number of rounds, at least one, and b none at zero.
func roundRatios(a, b []float64) (r ratios, ok bool) {
	if len(a) == 0 || len(a) != len(b) {
		return r, false
	}
	v := make([]float64, len(a))
	for i := range a {
		if b[i] == 0 {
			return r, false
		}
		v[i] = a[i] / b[i]
	}
	slices.Sort(v)
	r = ratios{median: v[len(v)/2], lo: v[0], hi: v[len(v)-1], n: len(v)}
	if len(v)%2 == 0 {
		r.median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return r, true
}

// medianRatio is the median of a's ratios to b round by round, rounded to
// 3 digits, or nil.
func medianRatio(a, b []float64) *float64 {
	r, ok := roundRatios(a, b)
	if !ok {
		return nil
	}
	m := round(r.median, 3)
	return &m
}

func find(rows []Row, config, protocol, client string) *Row {
	for i := range rows {
		if rows[i].Config == config && rows[i].Protocol == protocol && rows[i].Client == client {
			return &rows[i]
		}
	}
	return nil
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

// FailedCalls returns how many calls failed, in warm-ups and measured
// windows. A report with failed calls does not measure what it says.
func (rep *Report) FailedCalls() uint64 {
	var n uint64
	for _, r := range rep.Rows {
		n += r.failed()
	}
	return n
}

// Distribution describes the traffic, for the report's reader.
func (rep *Report) Distribution() string {
	o := rep.Options
	per := float64(o.Concurrency) / float64(o.Connections)
	return fmt.Sprintf("%d distinct users, each with its own EdDSA token (role customer, bound to the client certificate, as Login issues them) "+
		"and its own request body: every call picks a user uniformly at random (PCG per caller, seed %d) and asks GetUser for that user's own id; "+
		"the bare configurations get the same requests without the token. "+
		"Before measuring, every user calls every configuration once with every client, as in a steady state where each token is verified once in its lifetime. "+
		"%d concurrent callers over %d connections per configuration and client (caller i on connection i mod %d: %.3g callers per connection).",
		o.Users, o.Seed, o.Concurrency, o.Connections, o.Connections, per)
}

// Sides says where the CPU and allocation figures come from.
func (rep *Report) Sides() string {
	if rep.SeparateProcesses {
		return "the servers run in a child process, the clients in this one: server_* columns are the server process's deltas " +
			"(getrusage user+sys, runtime.MemStats, read by itself before and after each window), client_* columns this process's " +
			"(the callers: client stack, TLS, plus the harness's own loop, histogram and random choice); cpu_us_per_call and allocs_per_call are their sum"
	}
	return "servers and clients run in this process: cpu_us_per_call and allocs_per_call are whole-process deltas (getrusage user+sys, runtime.MemStats), " +
		"both sides together; the server/client split is unknown"
}

// WriteJSON writes the rows as a JSON array.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep.Rows); err != nil {
		return fmt.Errorf("bench: write JSON: %w", err)
	}
	return nil
}

// WriteMarkdown writes the report for a person: how it was measured, the
// table, the errors if any, and the issues' targets checked.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	o := rep.Options
	var b strings.Builder
	fmt.Fprintf(&b, "## palisade bench: unary user.v1.UserService/GetUser, concurrency %d, %d rounds × %s per row (each after a %s warm-up)\n\n",
		o.Concurrency, o.Rounds, o.Duration, o.Warmup)
	fmt.Fprintf(&b, "- traffic: %s\n", rep.Distribution())
	fmt.Fprintf(&b, "- order: rounds alternate direction (forward, backward, …) over %d rows, so machine drift weighs on all alike; every window starts after a GC of both processes\n", len(rep.Rows))
	fmt.Fprintf(&b, "- connections accepted per server after the first calls: %s\n", rep.connectionsLine())
	fmt.Fprintf(&b, "- client: connect-go is Connect's generated-style client on Palisade's HTTP/2 client; grpc-go a ClientConn with mTLS credentials; "+
		"a row driven by the other stack's client is marked [client]\n")
	fmt.Fprintf(&b, "- rps: successful calls / measured time, all rounds; p50_us, p99_us: over every call of every round, seen by the client (log-linear histogram, ±0.4%%)\n")
	fmt.Fprintf(&b, "- cpu and allocations per call: %s\n", rep.Sides())
	fmt.Fprintf(&b, "- ×bare: against the bare mTLS row of the same server stack (mtls, also for nethttp-mtls; grpcgo-mtls for grpc-go), protocol and client; "+
		"×cache: against grpcgo-mtls+jwt+opa+cache/grpc; each the median of the rounds' ratios\n")
	fmt.Fprintf(&b, "- Palisade server logs: %s\n", o.ServerLog)
	fmt.Fprintf(&b, "- machine: %s %s/%s, %d CPUs, GOMAXPROCS %d, load average %s at start, %s at end\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), orUnknown(rep.LoadBefore), orUnknown(rep.LoadAfter))
	if n := rep.FailedCalls(); n > 0 {
		fmt.Fprintf(&b, "**WARNING: %d calls failed; the rows marked ⚠ do not measure what they say.**\n\n", n)
	}

	b.WriteString("| config | protocol | client | rps | rps_spread | p50_us | p99_us | cpu_us_per_call | server_cpu_us | client_cpu_us | " +
		"allocs_per_call | server_allocs | client_allocs | bytes_per_call | rps ×bare | p99 ×bare | rps ×cache | p99 ×cache | errors |\n")
	b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, r := range rep.Rows {
		mark := ""
		if r.failed() > 0 || r.NewConnections > 0 {
			mark = " ⚠"
		}
		fmt.Fprintf(&b, "| %s%s | %s | %s | %.0f | %s | %.0f | %.0f | %s | %s | %s | %.1f | %s | %s | %.0f | %s | %s | %s | %s | %s |\n",
			r.Config, mark, r.Protocol, r.Client, r.RPS, spread(r.RoundsRPS), r.P50us, r.P99us,
			optional(r.CPUusPerCall, "%.1f"), optional(r.ServerCPUusPerCall, "%.1f"), optional(r.ClientCPUusPerCall, "%.1f"),
			r.AllocsPerCall, optional(r.ServerAllocsPerCall, "%.1f"), optional(r.ClientAllocsPerCall, "%.1f"), r.BytesPerCall,
			optional(r.RPSvsMTLS, "%.2f×"), optional(r.P99vsMTLS, "%.2f×"), optional(r.RPSvsGRPCGoCache, "%.2f×"), optional(r.P99vsGRPCGoCache, "%.2f×"),
			errorsCell(r))
	}
	b.WriteString("\nrps_spread: (max − min) / mean of the rounds' throughputs.\n")
	for _, r := range rep.Rows {
		if r.NewConnections > 0 {
			fmt.Fprintf(&b, "\n%s: %d connections were opened while measuring (clients reconnected).\n", r.name(), r.NewConnections)
		}
		if r.failed() == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s failed calls:", r.name())
		for _, code := range sortedKeys(r.ErrorSamples) {
			fmt.Fprintf(&b, "\n- %s: %d measured, %d in warm-up; first: %s", code, r.Errors[code], r.WarmupErrors[code], r.ErrorSamples[code])
		}
		b.WriteString("\n")
	}

	b.WriteString("\nPreflight (security in place before measuring):\n")
	for _, l := range rep.Preflight {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	b.WriteString("\nTargets (ratios from this run, each the median of the rounds' ratios; the command does not fail on them):\n")
	for _, c := range rep.Checks() {
		fmt.Fprintf(&b, "%-4s  %s\n", c.Status, c.Detail)
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("bench: write report: %w", err)
	}
	return nil
}

func (rep *Report) connectionsLine() string {
	var parts []string
	for _, c := range Configs() {
		if n, ok := rep.Connections[c]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", c, n))
		}
	}
	return strings.Join(parts, ", ")
}

func spread(v []float64) string {
	if len(v) < 2 {
		return "–"
	}
	lo, hi, sum := slices.Min(v), slices.Max(v), 0.0
	for _, x := range v {
		sum += x
	}
	if sum == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", 100*(hi-lo)/(sum/float64(len(v))))
}

func optional(v *float64, format string) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf(format, *v)
}

func errorsCell(r Row) string {
	if r.failed() == 0 {
		return "0"
	}
	var parts []string
	for _, code := range sortedKeys(r.ErrorSamples) {
		parts = append(parts, fmt.Sprintf("%s %d", code, r.Errors[code]+r.WarmupErrors[code]))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Check is one of the issues' targets checked against a report.
type Check struct {
	// Status is "PASS", "FAIL" or "SKIP" (a row it needs was not
	// measured).
	Status string
	// Detail says what was compared, with the figures.
	Detail string
}

// Targets of issue 5, for c = 64 on the project's 2-core machine.
const (
	TargetRPSvsMTLS   = 0.85 // full chain throughput ≥ 0.85 × mtls, same protocol
	TargetP99vsMTLS   = 1.25 // full chain p99 ≤ 1.25 × mtls, same protocol
	TargetRPSvsGRPCGo = 1.5  // full chain throughput ≥ 1.5 × grpc-go's naive chain
)

// Targets of issue 16: against grpc-go with the same checks and caches.
const (
	TargetGRPCRPSvsGRPCGoCache    = 0.9 // full chain over gRPC: throughput ≥ 0.9 × grpcgo-mtls+jwt+opa+cache
	TargetGRPCP99vsGRPCGoCache    = 1.1 // full chain over gRPC: p99 ≤ 1.1 × grpcgo-mtls+jwt+opa+cache
	TargetConnectRPSvsGRPCGoCache = 0.8 // full chain over Connect: throughput ≥ 0.8 × grpcgo-mtls+jwt+opa+cache
)

// Checks compares, each by the median of the rounds' ratios, the full
// chain with mtls (throughput and p99, per protocol) and with grpc-go's
// naive chain (issue 5), and with grpc-go's cached chain (issue 16). The
// rows compared are those driven by their own stack's client.
func (rep *Report) Checks() []Check {
	native := func(config, protocol string) pair { return pair{config, protocol, specOf(config).nativeClient()} }
	check := func(issue string, a, b pair, m metric, target float64, atLeast bool) Check {
		ra, rb := find(rep.Rows, a.config, a.protocol, a.client), find(rep.Rows, b.config, b.protocol, b.client)
		return ratioCheck(issue, a, b, ra, rb, m, target, atLeast)
	}
	grpcgo, cache := native(ConfigGRPCGo, ProtocolGRPC), native(ConfigGRPCGoCache, ProtocolGRPC)
	var out []Check
	for _, p := range Protocols() {
		out = append(out,
			check("issue 5", native(ConfigFull, p), native(ConfigMTLS, p), metricRPS, TargetRPSvsMTLS, true),
			check("issue 5", native(ConfigFull, p), native(ConfigMTLS, p), metricP99, TargetP99vsMTLS, false))
	}
	for _, p := range Protocols() {
		out = append(out, check("issue 5", native(ConfigFull, p), grpcgo, metricRPS, TargetRPSvsGRPCGo, true))
	}
	return append(out,
		check("issue 16", native(ConfigFull, ProtocolGRPC), cache, metricRPS, TargetGRPCRPSvsGRPCGoCache, true),
		check("issue 16", native(ConfigFull, ProtocolGRPC), cache, metricP99, TargetGRPCP99vsGRPCGoCache, false),
		check("issue 16", native(ConfigFull, ProtocolConnect), cache, metricRPS, TargetConnectRPSvsGRPCGoCache, true))
}

// metric is a figure a check compares: its name, each round's values and
// the whole run's.
type metric struct {
	name   string
	rounds func(*Row) []float64
	whole  func(*Row) float64
}

var (
	metricRPS = metric{"rps", func(r *Row) []float64 { return r.RoundsRPS }, func(r *Row) float64 { return r.RPS }}
	metricP99 = metric{"p99", func(r *Row) []float64 { return r.RoundsP99us }, func(r *Row) float64 { return r.P99us }}
)

// ratioCheck checks the ratio of a's m to b's against target: at least it
// when atLeast, at most it otherwise. The ratio is the median of the
// rounds' ratios; the whole run's, when the rows have no rounds to pair.
func ratioCheck(issue string, aName, bName pair, a, b *Row, m metric, target float64, atLeast bool) Check {
	op := "≤"
	if atLeast {
		op = "≥"
	}
	want := fmt.Sprintf("%s: %s %s %s %.2f× %s", issue, aName, m.name, op, target, bName)
	if a == nil || b == nil || m.whole(b) == 0 {
		return Check{Status: "SKIP", Detail: want + ": not measured in this run"}
	}
	ratio := m.whole(a) / m.whole(b)
	how := fmt.Sprintf("%.2f× (%.0f vs %.0f)", ratio, m.whole(a), m.whole(b))
	if r, ok := roundRatios(m.rounds(a), m.rounds(b)); ok {
		ratio = r.median
		how = fmt.Sprintf("%.2f×, median of %d round ratios (%.2f–%.2f×); all rounds %.0f vs %.0f", r.median, r.n, r.lo, r.hi, m.whole(a), m.whole(b))
	}
	status := "PASS"
	if (atLeast && ratio < target) || (!atLeast && ratio > target) || a.failed() > 0 || b.failed() > 0 {
		status = "FAIL"
	}
	detail := want + ": " + how
	if a.failed() > 0 || b.failed() > 0 {
		detail += " — calls failed, not a valid figure"
	}
	return Check{Status: status, Detail: detail}
}
