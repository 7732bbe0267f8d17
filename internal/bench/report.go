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
	// Rows has one row per configuration and protocol, in report order.
	Rows []Row
	// Preflight has a line per configuration and protocol saying what its
	// security checks saw.
	Preflight []string
	// Connections is how many connections each configuration's server had
	// accepted once every client had made its first call.
	Connections map[string]int64
	// LoadBefore and LoadAfter are the machine's load averages (1, 5, 15
	// minutes) when the measurement started and ended; empty where unknown.
	LoadBefore, LoadAfter string
}

// Row is the measurement of one configuration and protocol over all rounds.
// Allocations, bytes and CPU time are the whole process's (the clients and
// the servers run in it) divided by the successful calls.
type Row struct {
	Config      string `json:"config"`
	Protocol    string `json:"protocol"`
	Concurrency int    `json:"concurrency"`
	// RPS is successful calls per second over the measured windows.
	RPS float64 `json:"rps"`
	// P50us and P99us are latency quantiles in microseconds, over every
	// call of every round.
	P50us         float64 `json:"p50_us"`
	P99us         float64 `json:"p99_us"`
	AllocsPerCall float64 `json:"allocs_per_call"`
	BytesPerCall  float64 `json:"bytes_per_call"`
	// CPUusPerCall is nil where the process's CPU time is unknown.
	CPUusPerCall *float64 `json:"cpu_us_per_call"`
	// RPSvsMTLS and P99vsMTLS divide RPS and P99us by those of mtls over the
	// same protocol (gRPC for grpc-go); nil when mtls was not measured.
	RPSvsMTLS *float64 `json:"rps_vs_mtls"`
	P99vsMTLS *float64 `json:"p99_vs_mtls"`
	// RoundsRPS is the throughput of each round, in the order measured.
	RoundsRPS []float64 `json:"rounds_rps"`
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
			Config: p.config, Protocol: p.protocol, Concurrency: o.Concurrency,
			P50us:     round(s.hist.Quantile(0.50).Seconds()*1e6, 1),
			P99us:     round(s.hist.Quantile(0.99).Seconds()*1e6, 1),
			Calls:     s.calls,
			Errors:    s.errors,
			RoundsRPS: make([]float64, len(s.roundsRPS)),

			WarmupErrors: s.warmupErrors, ErrorSamples: s.samples, NewConnections: s.newConns,
			Users: o.Users, Connections: o.Connections, Rounds: o.Rounds, DurationS: o.Duration.Seconds(),
		}
		if row.Errors == nil {
			row.Errors = map[string]uint64{}
		}
		for i, v := range s.roundsRPS {
			row.RoundsRPS[i] = round(v, 1)
		}
		if s.elapsed > 0 {
			row.RPS = round(float64(s.calls)/s.elapsed.Seconds(), 1)
		}
		if s.calls > 0 {
			n := float64(s.calls)
			row.AllocsPerCall = round(float64(s.mallocs)/n, 1)
			row.BytesPerCall = round(float64(s.bytes)/n, 0)
			if s.cpuKnown {
				cpu := round(s.cpu.Seconds()*1e6/n, 1)
				row.CPUusPerCall = &cpu
			}
		}
		out = append(out, row)
	}
	for i := range out {
		base := find(out, ConfigMTLS, out[i].Protocol)
		if base == nil || base.RPS == 0 || base.P99us == 0 {
			continue
		}
		rps, p99 := round(out[i].RPS/base.RPS, 3), round(out[i].P99us/base.P99us, 3)
		out[i].RPSvsMTLS, out[i].P99vsMTLS = &rps, &p99
	}
	return out
}

func find(rows []Row, config, protocol string) *Row {
	for i := range rows {
		if rows[i].Config == config && rows[i].Protocol == protocol {
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
		"Before measuring, every user calls every configuration once, as in a steady state where each token is verified once in its lifetime. "+
		"%d concurrent callers over %d connections per configuration (caller i on connection i mod %d: %.3g callers per connection).",
		o.Users, o.Seed, o.Concurrency, o.Connections, o.Connections, per)
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
// table, the errors if any, and the targets checked.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	o := rep.Options
	var b strings.Builder
	fmt.Fprintf(&b, "## palisade bench: unary user.v1.UserService/GetUser, concurrency %d, %d rounds × %s per configuration (each after a %s warm-up)\n\n",
		o.Concurrency, o.Rounds, o.Duration, o.Warmup)
	fmt.Fprintf(&b, "- traffic: %s\n", rep.Distribution())
	fmt.Fprintf(&b, "- order: rounds alternate direction (forward, backward, …) over %d configuration×protocol pairs, so machine drift weighs on all alike; every window starts after a GC\n", len(rep.Rows))
	fmt.Fprintf(&b, "- connections accepted per server after the first calls: %s\n", rep.connectionsLine())
	fmt.Fprintf(&b, "- rps: successful calls / measured time, all rounds; p50_us, p99_us: over every call of every round (log-linear histogram, ±0.4%%); "+
		"allocs, bytes and cpu_us per call: whole-process deltas (runtime.MemStats, getrusage user+sys) / calls: clients and servers run in this process; "+
		"*_vs_mtls: divided by mtls over the same protocol (gRPC for grpc-go)\n")
	fmt.Fprintf(&b, "- Palisade server logs: %s\n", o.ServerLog)
	fmt.Fprintf(&b, "- machine: %s %s/%s, %d CPUs, GOMAXPROCS %d, load average %s at start, %s at end\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), orUnknown(rep.LoadBefore), orUnknown(rep.LoadAfter))
	if n := rep.FailedCalls(); n > 0 {
		fmt.Fprintf(&b, "**WARNING: %d calls failed; the rows marked ⚠ do not measure what they say.**\n\n", n)
	}

	b.WriteString("| config | protocol | concurrency | rps | rps_spread | p50_us | p99_us | allocs_per_call | bytes_per_call | cpu_us_per_call | rps_vs_mtls | p99_vs_mtls | errors |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, r := range rep.Rows {
		mark := ""
		if r.failed() > 0 || r.NewConnections > 0 {
			mark = " ⚠"
		}
		fmt.Fprintf(&b, "| %s%s | %s | %d | %.0f | %s | %.0f | %.0f | %.1f | %.0f | %s | %s | %s | %s |\n",
			r.Config, mark, r.Protocol, r.Concurrency, r.RPS, spread(r.RoundsRPS), r.P50us, r.P99us, r.AllocsPerCall, r.BytesPerCall,
			optional(r.CPUusPerCall, "%.1f"), optional(r.RPSvsMTLS, "%.2f×"), optional(r.P99vsMTLS, "%.2f×"), errorsCell(r))
	}
	b.WriteString("\nrps_spread: (max − min) / mean of the rounds' throughputs.\n")
	for _, r := range rep.Rows {
		if r.NewConnections > 0 {
			fmt.Fprintf(&b, "\n%s/%s: %d connections were opened while measuring (clients reconnected).\n", r.Config, r.Protocol, r.NewConnections)
		}
		if r.failed() == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s/%s failed calls:", r.Config, r.Protocol)
		for _, code := range sortedKeys(r.ErrorSamples) {
			fmt.Fprintf(&b, "\n- %s: %d measured, %d in warm-up; first: %s", code, r.Errors[code], r.WarmupErrors[code], r.ErrorSamples[code])
		}
		b.WriteString("\n")
	}

	b.WriteString("\nPreflight (security in place before measuring):\n")
	for _, l := range rep.Preflight {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	b.WriteString("\nTargets of issue 5 (ratios from this run; the command does not fail on them):\n")
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

// Check is one of the targets checked against a report.
type Check struct {
	// Status is "PASS", "FAIL" or "SKIP" (a configuration it needs was not
	// measured).
	Status string
	// Detail says what was compared, with the figures.
	Detail string
}

// Targets of issue 5, for c = 64 on the project's 2-core machine.
const (
	TargetRPSvsMTLS   = 0.85 // full chain throughput ≥ 0.85 × mtls
	TargetP99vsMTLS   = 1.25 // full chain p99 ≤ 1.25 × mtls
	TargetRPSvsGRPCGo = 1.5  // full chain throughput ≥ 1.5 × grpc-go's chain
)

// Checks compares the full chain with mtls (throughput and p99, per
// protocol) and with grpc-go's chain (throughput, per protocol of the full
// chain against grpc-go's gRPC).
func (rep *Report) Checks() []Check {
	var out []Check
	for _, p := range Protocols() {
		full, mtls := find(rep.Rows, ConfigFull, p), find(rep.Rows, ConfigMTLS, p)
		out = append(out,
			ratioCheck(full, mtls, func(r *Row) float64 { return r.RPS }, "rps", TargetRPSvsMTLS, true, ConfigFull+"/"+p, ConfigMTLS+"/"+p),
			ratioCheck(full, mtls, func(r *Row) float64 { return r.P99us }, "p99", TargetP99vsMTLS, false, ConfigFull+"/"+p, ConfigMTLS+"/"+p))
	}
	grpcgo := find(rep.Rows, ConfigGRPCGo, ProtocolGRPC)
	for _, p := range Protocols() {
		out = append(out, ratioCheck(find(rep.Rows, ConfigFull, p), grpcgo, func(r *Row) float64 { return r.RPS }, "rps",
			TargetRPSvsGRPCGo, true, ConfigFull+"/"+p, ConfigGRPCGo+"/"+ProtocolGRPC))
	}
	return out
}

// roundRatios describes the throughput ratios of a to b round by round (a
// round measures every pair once, so its two windows are close in time): how
// far machine noise moves the ratio. Empty with fewer than two rounds.
func roundRatios(a, b []float64) string {
	if len(a) < 2 || len(a) != len(b) {
		return ""
	}
	r := make([]float64, len(a))
	for i := range a {
		if b[i] == 0 {
			return ""
		}
		r[i] = a[i] / b[i]
	}
	slices.Sort(r)
	median := r[len(r)/2]
	if len(r)%2 == 0 {
		median = (r[len(r)/2-1] + median) / 2
	}
	return fmt.Sprintf("; round by round %.2f–%.2f×, median %.2f×", r[0], r[len(r)-1], median)
}

// ratioCheck checks metric(a)/metric(b) against target: at least it when
// atLeast, at most it otherwise.
func ratioCheck(a, b *Row, metric func(*Row) float64, name string, target float64, atLeast bool, aName, bName string) Check {
	op := "≤"
	if atLeast {
		op = "≥"
	}
	want := fmt.Sprintf("%s %s %s %.2f× %s", aName, name, op, target, bName)
	if a == nil || b == nil || metric(b) == 0 {
		return Check{Status: "SKIP", Detail: want + ": not measured in this run"}
	}
	ratio := metric(a) / metric(b)
	status := "PASS"
	if (atLeast && ratio < target) || (!atLeast && ratio > target) || a.failed() > 0 || b.failed() > 0 {
		status = "FAIL"
	}
	detail := fmt.Sprintf("%s: %.2f× (%.0f vs %.0f)", want, ratio, metric(a), metric(b))
	if name == "rps" {
		detail += roundRatios(a.RoundsRPS, b.RoundsRPS)
	}
	if a.failed() > 0 || b.failed() > 0 {
		detail += " — calls failed, not a valid figure"
	}
	return Check{Status: status, Detail: detail}
}
