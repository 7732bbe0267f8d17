package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/fanout"
)

// fanoutServerProcess is the argument `palisade bench-fanout` re-executes
// itself with to run Palisade's server in a child process.
const fanoutServerProcess = "server-process"

func benchFanoutCmd(args []string) error {
	if len(args) == 1 && args[0] == fanoutServerProcess {
		// The child of a run: serve on stdin and stdout until the parent
		// stops it or goes away. An interrupt is the parent's to handle.
		signal.Ignore(os.Interrupt)
		return fanout.Serve(context.Background(), os.Stdin, os.Stdout)
	}
	fs := newFlagSet("palisade bench-fanout", `Measure the user change feed fanned out to many subscribers, against
Redis pub/sub carrying the same changes to as many subscribers.

For each --sizes subscriber count, each side in turn gets a fresh server:

  palisade  the sample user service's change feed (WatchUserChanges) on a
            SQLite store, the default policy, mTLS, in a child process
            (this command re-executed as "palisade bench-fanout
            server-process"); the subscribers are streams multiplexed over
            at most --connections HTTP/2 connections, each connection the
            order service's workload with a certificate of its own, each
            stream authorized by the policy when it opens
  redis     redis-server (from PATH, or --redis-server; scripts/install-deps.sh
            installs Debian's) on a free loopback port, TLS 1.3 only with
            client certificates required (tls-auth-clients yes), ACL users
            for the publisher and the subscribers, nothing saved; a
            connection per subscriber, the same certificates

It samples the server's memory with every subscriber idle against none
(Go: live heap and stacks after a collection, and RSS; Redis: used_memory
and RSS), then commits --changes changes --interval apart (Palisade: the
store's write; Redis: PUBLISH of the same UserChange message) and records
when each reaches each subscriber. After half of them it stops --restart of
the subscribers (at least one), commits --down changes and restarts them: a
Palisade subscriber resumes after the last sequence it received, a Redis
subscriber subscribes again; what each never received is counted.

Prints a markdown table per size and side — latency from commit to
subscriber (p50, p99, max; the changes a restarted subscriber got on
resuming are counted apart, as replayed), server memory per idle
subscriber, server CPU time per change delivered, changes missed — the
ratios, what the preflight saw on each server, and issue 17's targets
checked. The figures mean something on a quiet machine only: the 1-minute
load average is printed, and above 1.5 the report calls them indicative.
Fails if a subscriber fails or a Palisade subscriber misses a change.`)
	o := fanout.Options{}
	sizes := fs.String("sizes", joinInts(fanout.DefaultSizes()), "comma-separated subscriber `counts`")
	sides := fs.String("sides", strings.Join(fanout.Sides(), ","), "comma-separated `sides` to measure (palisade, redis)")
	fs.IntVar(&o.Changes, "changes", fanout.DefaultChanges, "`number` of changes per side and size")
	fs.DurationVar(&o.Interval, "interval", fanout.DefaultInterval, "`time` between changes (at least)")
	fs.IntVar(&o.Connections, "connections", fanout.DefaultConnections, "most HTTP/2 `connections` Palisade's subscribers share")
	fs.Float64Var(&o.Restart, "restart", fanout.DefaultRestart, "`fraction` of the subscribers stopped and restarted mid-run")
	fs.IntVar(&o.Down, "down", fanout.DefaultDown, "`number` of changes committed while they are away")
	fs.DurationVar(&o.Settle, "settle", fanout.DefaultSettle, "`time` the subscribers stay idle before the memory is sampled")
	fs.DurationVar(&o.Timeout, "timeout", fanout.DefaultTimeout, "longest `time` to wait for subscriptions and deliveries")
	fs.StringVar(&o.RedisServer, "redis-server", "", "redis-server `program` (default: from PATH)")
	fs.StringVar(&o.ServerCPUProfile, "server-cpuprofile", "", "write a CPU profile of Palisade's server process to `file` (the last size's)")
	jsonFile := fs.String("json", "", "also write the report as JSON to `file`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var err error
	if o.Sizes, err = parseInts(*sizes); err != nil {
		return fmt.Errorf("--sizes: %w", err)
	}
	o.Sides = splitList(*sides)
	o.Progress = os.Stderr
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench-fanout: find this program to run the server with: %w", err)
	}
	o.ServerCommand = []string{exe, "bench-fanout", fanoutServerProcess}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	start := time.Now()
	rep, runErr := fanout.Run(ctx, o)
	if rep != nil {
		if err := rep.WriteMarkdown(os.Stdout); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bench-fanout: done in %s\n", time.Since(start).Round(time.Second))
		if *jsonFile != "" {
			f, err := os.Create(*jsonFile)
			if err != nil {
				return fmt.Errorf("json: %w", err)
			}
			werr := rep.WriteJSON(f)
			if err := errors.Join(werr, f.Close()); err != nil {
				return fmt.Errorf("json: %w", err)
			}
		}
	}
	return runErr
}

// parseInts parses a comma-separated list of positive integers.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, item := range splitList(s) {
		n, err := strconv.Atoi(item)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", item)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("no sizes")
	}
	return out, nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
