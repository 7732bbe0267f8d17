package fanout

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Targets of issue 17, checked at TargetSize subscribers (or the largest
// size measured, if smaller).
const (
	TargetSize          = 1000
	TargetP99Ratio      = 2.0      // Palisade's p99 at most this × Redis's
	TargetBytesPerIdle  = 64 << 10 // server memory per idle stream
	indicativeLoadAbove = 1.5      // 1-minute load average
)

// Row is one side at one size.
type Row struct {
	Side        string `json:"side"`
	Subscribers int    `json:"subscribers"`
	// Conns is the client connections the server held for the subscribers.
	Conns   int64 `json:"conns"`
	Changes int   `json:"changes"`
	// Latency from a change's commit (Palisade: the store's write returned;
	// Redis: handed to PUBLISH) to its arrival at a subscriber, over every
	// arrival but those of changes committed while their subscriber was
	// away (Replayed).
	Samples int           `json:"samples"`
	P50     time.Duration `json:"p50_ns"`
	P99     time.Duration `json:"p99_ns"`
	Max     time.Duration `json:"max_ns"`
	// LivePerSub and RSSPerSub are the server's memory with every
	// subscriber idle, less its memory before any, per subscriber (bytes):
	// live heap and stacks (Go) or used_memory (Redis), and the resident
	// set (0: unknown).
	LivePerSub float64 `json:"live_bytes_per_subscriber"`
	RSSPerSub  float64 `json:"rss_bytes_per_subscriber"`
	// CPUPerDelivery is the server's CPU time from the first change until
	// every subscriber had the last, per change delivered (including the
	// heartbeats, the restarts and, for Palisade, the store's writes).
	CPUPerDelivery time.Duration `json:"cpu_ns_per_delivery"`
	CPUKnown       bool          `json:"cpu_known"`
	// Restarted subscribers were stopped after half the changes and
	// restarted Down changes later.
	Restarted int `json:"restarted"`
	// Delivered counts the changes that arrived; Missed those that never
	// did, MissedLive of them those committed while their subscriber was
	// subscribed; Replayed the arrivals of changes committed while their
	// subscriber was away; Duplicates the changes that arrived twice.
	Delivered  int64 `json:"delivered"`
	Missed     int64 `json:"missed"`
	MissedLive int64 `json:"missed_while_subscribed"`
	Replayed   int64 `json:"replayed"`
	Duplicates int64 `json:"duplicates"`
}

func (r Row) summary() string {
	return fmt.Sprintf("%s %d subscribers: p50 %s p99 %s max %s; %s/subscriber idle (RSS %s); %s CPU/delivery; %d restarted, %d missed, %d replayed",
		r.Side, r.Subscribers, ms(r.P50), ms(r.P99), ms(r.Max), kib(r.LivePerSub), kib(r.RSSPerSub), us(r), r.Restarted, r.Missed, r.Replayed)
}

// Report is the result of a run.
type Report struct {
	Changes      int           `json:"changes"`
	Interval     time.Duration `json:"interval_ns"`
	Connections  int           `json:"connections"`
	Restart      float64       `json:"restart_fraction"`
	Down         int           `json:"down"`
	GOMAXPROCS   int           `json:"gomaxprocs"`
	NumCPU       int           `json:"num_cpu"`
	GoVersion    string        `json:"go_version"`
	RedisVersion string        `json:"redis_version,omitempty"`
	// LoadStart and LoadEnd are the 1-minute load averages (-1: unknown).
	LoadStart float64  `json:"load_start"`
	LoadEnd   float64  `json:"load_end"`
	Preflight []string `json:"preflight"`
	Rows      []Row    `json:"rows"`
}

// row returns side's row at n subscribers.
func (rep *Report) row(side string, n int) (Row, bool) {
	for _, r := range rep.Rows {
		if r.Side == side && r.Subscribers == n {
			return r, true
		}
	}
	return Row{}, false
}

// Target is one of issue 17's targets, checked.
type Target struct {
	Name string `json:"name"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// Targets checks the targets at TargetSize subscribers, or at the largest
// size measured on both sides if smaller; nil if no size was.
func (rep *Report) Targets() []Target {
	size := 0
	for _, r := range rep.Rows {
		if _, ok := rep.row(SideRedis, r.Subscribers); ok && r.Side == SidePalisade && r.Subscribers <= TargetSize {
			size = max(size, r.Subscribers)
		}
	}
	var out []Target
	if size > 0 {
		p, _ := rep.row(SidePalisade, size)
		r, _ := rep.row(SideRedis, size)
		ratio := float64(p.P99) / float64(max(r.P99, 1))
		out = append(out, Target{
			Name: fmt.Sprintf("%d subscribers: Palisade's p99 ≤ %g× Redis pub/sub's", size, TargetP99Ratio),
			Got:  fmt.Sprintf("%s / %s = %.2f×", ms(p.P99), ms(r.P99), ratio),
			Met:  ratio <= TargetP99Ratio,
		})
	}
	var missed, restarted int64
	var redisMissed []string
	for _, r := range rep.Rows {
		switch r.Side {
		case SidePalisade:
			missed += r.Missed
			restarted += int64(r.Restarted)
		case SideRedis:
			redisMissed = append(redisMissed, fmt.Sprintf("%d at %d", r.Missed, r.Subscribers))
		}
	}
	if restarted > 0 {
		got := fmt.Sprintf("Palisade missed %d (%d subscribers restarted)", missed, restarted)
		if len(redisMissed) > 0 {
			got += "; Redis missed " + strings.Join(redisMissed, ", ")
		}
		out = append(out, Target{Name: "0 changes missed across subscriber restarts", Got: got, Met: missed == 0})
	}
	if size == 0 {
		for _, r := range rep.Rows {
			if r.Side == SidePalisade && r.Subscribers <= TargetSize {
				size = max(size, r.Subscribers)
			}
		}
	}
	if p, ok := rep.row(SidePalisade, size); ok {
		out = append(out, Target{
			Name: fmt.Sprintf("%d subscribers: server memory ≤ %d KiB per idle subscriber stream", size, TargetBytesPerIdle>>10),
			Got:  fmt.Sprintf("%s live heap and stacks (RSS %s)", kib(p.LivePerSub), kib(p.RSSPerSub)),
			Met:  p.LivePerSub <= TargetBytesPerIdle,
		})
	}
	return out
}

// Indicative reports whether the machine was busy at the end of the run
// (1-minute load average above 1.5): the figures are then indicative.
func (rep *Report) Indicative() bool { return rep.LoadEnd > indicativeLoadAbove }

// WriteMarkdown writes the report as markdown.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## Fan-out: Palisade's change feed and Redis pub/sub\n\n")
	fmt.Fprintf(&b, "%d changes per side and size, %s apart; %.0f%% of the subscribers (at least one) stopped after half of them and restarted %d changes later. ",
		rep.Changes, rep.Interval, rep.Restart*100, rep.Down)
	fmt.Fprintf(&b, "Palisade: WatchUserChanges streams over at most %d HTTP/2 connections, mTLS, each stream authorized by the default policy. ", rep.Connections)
	redis := "Redis"
	if rep.RedisVersion != "" {
		redis = "Redis " + rep.RedisVersion
	}
	fmt.Fprintf(&b, "%s: a connection per subscriber, TLS 1.3 with client certificates, ACL users.\n\n", redis)
	fmt.Fprintf(&b, "%s, GOMAXPROCS %d of %d CPUs; 1-minute load average %s at the start, %s at the end",
		rep.GoVersion, rep.GOMAXPROCS, rep.NumCPU, load(rep.LoadStart), load(rep.LoadEnd))
	if rep.Indicative() {
		fmt.Fprintf(&b, " (above %.1f: the figures are indicative)", indicativeLoadAbove)
	}
	b.WriteString(".\n\n")
	b.WriteString("| subscribers | side | conns | p50 | p99 | max | memory/subscriber idle (RSS) | CPU/delivery | restarted | missed (of them while subscribed) | replayed |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Rows {
		fmt.Fprintf(&b, "| %d | %s | %d | %s | %s | %s | %s (%s) | %s | %d | %d (%d) | %d |\n",
			r.Subscribers, r.Side, r.Conns, ms(r.P50), ms(r.P99), ms(r.Max), kib(r.LivePerSub), kib(r.RSSPerSub), us(r),
			r.Restarted, r.Missed, r.MissedLive, r.Replayed)
	}
	var sizes []int
	for _, r := range rep.Rows {
		if !slices.Contains(sizes, r.Subscribers) {
			sizes = append(sizes, r.Subscribers)
		}
	}
	var ratios []string
	for _, n := range sizes {
		p, okP := rep.row(SidePalisade, n)
		r, okR := rep.row(SideRedis, n)
		if !okP || !okR {
			continue
		}
		line := fmt.Sprintf("| %d | %.2f× | %.2f× |", n, float64(p.P99)/float64(max(r.P99, 1)), ratio(p.LivePerSub, r.LivePerSub))
		if p.CPUKnown && r.CPUKnown {
			line += fmt.Sprintf(" %.2f× |", float64(p.CPUPerDelivery)/float64(max(r.CPUPerDelivery, 1)))
		} else {
			line += " – |"
		}
		ratios = append(ratios, line)
	}
	if len(ratios) > 0 {
		b.WriteString("\nPalisade ÷ Redis:\n\n| subscribers | p99 | memory/subscriber | CPU/delivery |\n|---:|---:|---:|---:|\n")
		b.WriteString(strings.Join(ratios, "\n") + "\n")
	}
	if len(rep.Preflight) > 0 {
		b.WriteString("\nChecked on each server after its run:\n\n")
		for _, l := range rep.Preflight {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	if ts := rep.Targets(); len(ts) > 0 {
		b.WriteString("\nTargets:\n\n")
		for _, t := range ts {
			verdict := "met"
			if !t.Met {
				verdict = "MISSED"
			}
			fmt.Fprintf(&b, "- %s: %s — %s\n", t.Name, t.Got, verdict)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report, with its targets, as JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		*Report
		Targets    []Target `json:"targets"`
		Indicative bool     `json:"indicative"`
	}{rep, rep.Targets(), rep.Indicative()})
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func kib(b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f KiB", b/1024)
}

func us(r Row) string {
	if !r.CPUKnown {
		return "–"
	}
	return fmt.Sprintf("%.1f µs", float64(r.CPUPerDelivery)/float64(time.Microsecond))
}

func load(l float64) string {
	if l < 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.2f", l)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// latencies collects latency samples for exact quantiles.
type latencies struct{ d []time.Duration }

func (l *latencies) add(d time.Duration) { l.d = append(l.d, d) }
func (l *latencies) count() int          { return len(l.d) }

// quantile returns the sample of rank ceil(q·n) (0 without samples).
func (l *latencies) quantile(q float64) time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	if !slices.IsSorted(l.d) {
		slices.Sort(l.d)
	}
	i := int(q*float64(len(l.d))+0.999999) - 1
	return l.d[min(max(i, 0), len(l.d)-1)]
}

func (l *latencies) max() time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	return slices.Max(l.d)
}
