// Package fanout is `palisade bench-fanout`: it measures the user change
// feed (user.v1.UserService/WatchUserChanges, the stream the order
// service's user cache follows) fanned out to many subscribers, against
// Redis pub/sub carrying the same changes to the same number of
// subscribers, as a team would otherwise do it.
//
// For each size, each side in turn gets a fresh server: Palisade's in a
// child process (Serve: the sample user service's change feed on a SQLite
// store, the default policy, mTLS), Redis a redis-server on a free
// loopback port with TLS only, client certificates required and ACL users
// (publisher, subscriber). The subscribers run in this process: on
// Palisade's side, streams multiplexed over a bounded number of HTTP/2
// connections, each stream authenticated (the connection's workload
// certificate) and authorized (a policy decision when it opens); on
// Redis's, one connection per subscriber (a SUBSCRIBE holds its
// connection), each authenticated by certificate and password.
//
// A run measures, per side and size: the server's memory with every
// subscriber idle, against none; then commits Changes changes, Interval
// apart, and records for every subscriber when each arrived; the server's
// CPU time over that window. Halfway through, it stops a tenth of the
// subscribers (Restart), commits Down changes, and restarts them: a
// Palisade subscriber resumes after the last sequence it received, a Redis
// subscriber subscribes again; what each never received is counted.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Sides of the comparison.
const (
	SidePalisade = "palisade"
	SideRedis    = "redis"
)

// Defaults of Options.
const (
	DefaultChanges     = 200
	DefaultInterval    = 25 * time.Millisecond
	DefaultConnections = 8
	DefaultRestart     = 0.10
	DefaultDown        = 5
	DefaultSettle      = 2 * time.Second
	DefaultTimeout     = 60 * time.Second
)

// DefaultSizes are the subscriber counts measured unless Options.Sizes
// says otherwise.
func DefaultSizes() []int { return []int{1, 10, 100, 1000} }

// Sides returns the sides a run measures by default, in the order it
// measures them.
func Sides() []string { return []string{SidePalisade, SideRedis} }

// Options configure a run. The zero value of a field means its default.
type Options struct {
	// Sizes are the subscriber counts, measured in this order.
	Sizes []int
	// Sides to measure (default both).
	Sides []string
	// Changes committed per side and size, Interval apart (at least).
	Changes  int
	Interval time.Duration
	// Connections bounds the HTTP/2 connections Palisade's subscribers
	// share: subscriber i streams over connection i mod Connections, each
	// with a workload certificate of its own.
	Connections int
	// Restart is the fraction of subscribers stopped after half the
	// changes and restarted after Down more (at least one subscriber).
	Restart float64
	Down    int
	// Settle is how long the subscribers stay idle before the server's
	// memory is sampled.
	Settle time.Duration
	// Timeout bounds each wait: for subscribers to subscribe, and for the
	// changes to arrive.
	Timeout time.Duration
	// ServerCommand runs the Palisade server process: a program that calls
	// Serve with its standard input and output. Required for that side.
	ServerCommand []string
	// ServerCPUProfile, if set, is where the server process writes a CPU
	// profile of its run.
	ServerCPUProfile string
	// RedisServer is the redis-server program (default: from PATH).
	RedisServer string
	// Progress receives a line per step (nil: none).
	Progress io.Writer
}

func (o *Options) setDefaults() {
	if len(o.Sizes) == 0 {
		o.Sizes = DefaultSizes()
	}
	if len(o.Sides) == 0 {
		o.Sides = Sides()
	}
	if o.Changes == 0 {
		o.Changes = DefaultChanges
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.Restart == 0 {
		o.Restart = DefaultRestart
	}
	if o.Down == 0 {
		o.Down = DefaultDown
	}
	if o.Settle == 0 {
		o.Settle = DefaultSettle
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

func (o *Options) validate() error {
	for _, n := range o.Sizes {
		if n < 1 {
			return fmt.Errorf("fanout: size %d: a size is at least one subscriber", n)
		}
	}
	for _, s := range o.Sides {
		if !slices.Contains(Sides(), s) {
			return fmt.Errorf("fanout: unknown side %q (want %s)", s, strings.Join(Sides(), " or "))
		}
	}
	switch {
	case o.Changes < 2*o.Down+2:
		return fmt.Errorf("fanout: %d changes: need at least 2×down+2 = %d, so that the restarted subscribers are back before the last change", o.Changes, 2*o.Down+2)
	case o.Down < 1:
		return fmt.Errorf("fanout: down %d: at least one change is committed while subscribers are away", o.Down)
	case o.Interval < 0:
		return fmt.Errorf("fanout: interval %s is negative", o.Interval)
	case o.Connections < 1:
		return fmt.Errorf("fanout: %d connections: at least one", o.Connections)
	case o.Restart <= 0 || o.Restart > 1:
		return fmt.Errorf("fanout: restart fraction %g: want more than 0, at most 1", o.Restart)
	case o.Settle < 0 || o.Timeout < 0:
		return errors.New("fanout: settle and timeout must not be negative")
	case slices.Contains(o.Sides, SidePalisade) && len(o.ServerCommand) == 0:
		return errors.New("fanout: no server command to run Palisade's server process with")
	}
	return nil
}

// Run measures every side at every size and returns the report. It fails
// if a server or subscriber fails, or if a Palisade subscriber missed a
// change or received one twice (the feed's contract); the targets are
// checked in the report, not here.
func Run(ctx context.Context, o Options) (*Report, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	redisServer := ""
	if slices.Contains(o.Sides, SideRedis) {
		var err error
		if redisServer, err = findRedis(o.RedisServer); err != nil {
			return nil, err
		}
	}
	fx, err := newFixture(min(o.Connections, slices.Max(o.Sizes)))
	if err != nil {
		return nil, err
	}
	rep := &Report{
		Changes: o.Changes, Interval: o.Interval, Connections: o.Connections, Restart: o.Restart, Down: o.Down,
		GOMAXPROCS: runtime.GOMAXPROCS(0), NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(),
		LoadStart: loadAverage(),
	}
	for _, n := range o.Sizes {
		for _, side := range o.Sides {
			fmt.Fprintf(o.Progress, "fanout: %s, %d subscribers\n", side, n)
			var f feed
			switch side {
			case SidePalisade:
				f, err = startPalisade(ctx, o, fx, n)
			case SideRedis:
				var r *redisFeed
				r, err = startRedis(ctx, redisServer, fx, min(o.Connections, n))
				if err == nil {
					rep.RedisVersion = r.version
				}
				f = r
			}
			if err != nil {
				return nil, err
			}
			row, err := measure(ctx, o, f, side, n)
			if err == nil {
				var line string
				if line, err = f.preflight(ctx); err == nil && !slices.Contains(rep.Preflight, line) {
					rep.Preflight = append(rep.Preflight, line)
				}
			}
			err = errors.Join(err, f.close())
			if err != nil {
				return nil, fmt.Errorf("%w (%s, %d subscribers)", err, side, n)
			}
			fmt.Fprintf(o.Progress, "fanout: %s\n", row.summary())
			rep.Rows = append(rep.Rows, row)
			if side == SidePalisade && (row.Missed > 0 || row.Duplicates > 0) {
				return rep, fmt.Errorf("fanout: Palisade's subscribers missed %d changes and received %d twice (%d subscribers): the feed must deliver each change once",
					row.Missed, row.Duplicates, n)
			}
		}
	}
	rep.LoadEnd = loadAverage()
	return rep, nil
}

// findRedis returns the redis-server program to run: path, or the one on
// PATH.
func findRedis(path string) (string, error) {
	if path == "" {
		path = "redis-server"
	}
	p, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("fanout: %s not found (%w): run scripts/install-deps.sh, which installs Debian's redis-server, or name the program with --redis-server", path, err)
	}
	return p, nil
}

// feed is one side of the comparison: its server and what subscribes to
// it.
type feed interface {
	// base is the sequence before the first change the run commits.
	base() int64
	// subscribe starts a subscription for s, after the last sequence s
	// received, and returns once it is live (Palisade: caught up; Redis:
	// the subscription confirmed), with s.stop set. Its receive loop
	// records what arrives in s, and a failure with s.fail.
	subscribe(ctx context.Context, s *subscriber) error
	// commit makes change k of the run and returns its sequence and when it
	// was made, on now's clock: when the store's write returned, or when
	// it was handed to PUBLISH.
	commit(ctx context.Context, k int) (seq, at int64, err error)
	// sample returns the server's counters; gc collects garbage first.
	sample(ctx context.Context, gc bool) (sample, error)
	// preflight checks that the server authenticates and authorizes as
	// claimed, and returns a line saying what it saw.
	preflight(ctx context.Context) (string, error)
	close() error
}

// measure runs one side at one size on f: n subscribers, the memory
// they cost idle, o.Changes changes with a restart of some subscribers
// halfway, and what arrived when.
func measure(ctx context.Context, o Options, f feed, side string, n int) (Row, error) {
	row := Row{Side: side, Subscribers: n, Changes: o.Changes}
	base := f.base()
	subs := make([]*subscriber, n)
	for i := range subs {
		subs[i] = newSubscriber(i, base, o.Changes)
	}
	defer func() {
		for _, s := range subs {
			if s.stop != nil {
				s.stop()
			}
		}
	}()
	before, err := f.sample(ctx, true)
	if err != nil {
		return row, err
	}
	if err := each(subs, 32, func(s *subscriber) error { return subscribeWithin(ctx, f, s, o.Timeout) }); err != nil {
		return row, err
	}
	if err := sleep(ctx, o.Settle); err != nil {
		return row, err
	}
	idle, err := f.sample(ctx, true)
	if err != nil {
		return row, err
	}
	row.Conns = idle.Conns - before.Conns
	row.LivePerSub = float64(int64(idle.Live)-int64(before.Live)) / float64(n)
	if idle.RSS > 0 && before.RSS > 0 {
		row.RSSPerSub = float64(int64(idle.RSS)-int64(before.RSS)) / float64(n)
	}
	for _, s := range subs {
		if err := s.failure(); err != nil {
			return row, err
		}
	}

	start, err := f.sample(ctx, false)
	if err != nil {
		return row, err
	}
	victims := pick(subs, o.Restart)
	row.Restarted = len(victims)
	away, back := o.Changes/2, o.Changes/2+o.Down
	commits := make([]int64, o.Changes)
	next := time.Now()
	for k := range o.Changes {
		switch k {
		case away:
			// Stop them once they have everything so far, so that what they
			// miss is exactly what is committed while they are away.
			if err := waitFor(ctx, victims, base+int64(k), o.Timeout); err != nil {
				return row, err
			}
			for _, v := range victims {
				v.stop()
				v.stop = nil
			}
		case back:
			if err := each(victims, 32, func(s *subscriber) error { return subscribeWithin(ctx, f, s, o.Timeout) }); err != nil {
				return row, err
			}
		}
		if err := sleep(ctx, time.Until(next)); err != nil {
			return row, err
		}
		seq, at, err := f.commit(ctx, k)
		if err != nil {
			return row, err
		}
		if seq != base+1+int64(k) {
			return row, fmt.Errorf("fanout: change %d has sequence %d, want %d", k, seq, base+1+int64(k))
		}
		commits[k] = at
		next = next.Add(o.Interval)
		if t := time.Now(); next.Before(t) {
			next = t
		}
	}
	// Every subscriber is subscribed by now, so every one gets the last change.
	if err := waitFor(ctx, subs, base+int64(o.Changes), o.Timeout); err != nil {
		return row, err
	}
	end, err := f.sample(ctx, false)
	if err != nil {
		return row, err
	}
	for _, s := range subs {
		s.stop()
		s.stop = nil
		if err := s.failure(); err != nil {
			return row, err
		}
	}

	restarted := make(map[*subscriber]bool, len(victims))
	for _, v := range victims {
		restarted[v] = true
	}
	var h latencies
	for _, s := range subs {
		row.Duplicates += s.dups
		for k, at := range s.recv {
			switch {
			case at == 0 && restarted[s] && k >= away && k < back:
				row.Missed++ // committed while it was away, and never sent
			case at == 0:
				row.Missed++
				row.MissedLive++ // committed while it was subscribed
			case restarted[s] && k >= away && k < back:
				row.Delivered++
				row.Replayed++ // committed while it was away: its latency is the outage's
			default:
				row.Delivered++
				h.add(time.Duration(at - commits[k]))
			}
		}
	}
	row.P50, row.P99, row.Max = h.quantile(0.50), h.quantile(0.99), h.max()
	row.Samples = h.count()
	if start.CPUKnown && end.CPUKnown && row.Delivered > 0 {
		row.CPUPerDelivery = (end.CPU - start.CPU) / time.Duration(row.Delivered)
		row.CPUKnown = true
	}
	return row, nil
}

// subscribeWithin subscribes s, giving up after timeout.
func subscribeWithin(ctx context.Context, f feed, s *subscriber, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := f.subscribe(ctx, s); err != nil {
		return fmt.Errorf("fanout: subscriber %d: subscribe: %w", s.id, err)
	}
	return nil
}

// pick returns ceil(fraction × len(subs)) subscribers, spread evenly over
// subs.
func pick(subs []*subscriber, fraction float64) []*subscriber {
	k := max(1, int(math.Ceil(fraction*float64(len(subs))-1e-9)))
	k = min(k, len(subs))
	out := make([]*subscriber, k)
	for i := range out {
		out[i] = subs[i*len(subs)/k]
	}
	return out
}

// sleep waits d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// loadAverage returns the 1-minute load average from /proc/loadavg, or -1
// where there is none.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	var l float64
	if _, err := fmt.Sscanf(string(b), "%f", &l); err != nil {
		return -1
	}
	return l
}
