package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"

	"github.com/palisade-rpc/palisade/internal/bench"
)

func benchCmd(args []string) error {
	fs := newFlagSet("palisade bench", `Measure what security costs. Starts, in this process on 127.0.0.1, the same
unary call (user.v1.UserService/GetUser, a small request and response) in seven
configurations:

  h2c                  bare Connect over cleartext HTTP/2, no security
  tls                  bare Connect, TLS 1.3, server authenticated only
  mtls                 bare Connect, TLS 1.3, client certificate required (the baseline)
  mtls+bearer          mtls with each call carrying its token, unchecked (the token's wire cost)
  mtls+jwt             Palisade's server: token verification, authorizer allows all
  mtls+jwt+opa         Palisade's whole chain: tokens and OPA on the default policy
  grpcgo-mtls+jwt+opa  grpc-go, mTLS, golang-jwt and an OPA query per call, no caches

checks that each one's security is in place, then drives each (over the
Connect and gRPC protocols; grpc-go over gRPC) with --concurrency callers
over --connections connections for --duration, after a --warmup, in --rounds
rounds of alternating direction. Each call is made by one of --users users
picked at random, with that user's token, for that user's own record.

Prints a markdown table (requests/s, p50 and p99 latency, allocations, bytes
and CPU time per call, ratios against mtls) and the issue's targets checked;
--json writes the rows as JSON. Fails if any call failed.`)
	o := bench.Options{}
	fs.DurationVar(&o.Duration, "duration", bench.DefaultDuration, "measured `time` per configuration and protocol in each round")
	fs.DurationVar(&o.Warmup, "warmup", bench.DefaultWarmup, "unmeasured `time` before each measured window (0: none)")
	fs.IntVar(&o.Rounds, "rounds", bench.DefaultRounds, "`number` of rounds")
	fs.IntVar(&o.Concurrency, "concurrency", bench.DefaultConcurrency, "`number` of concurrent callers")
	fs.IntVar(&o.Connections, "connections", bench.DefaultConnections, "`number` of connections per configuration (callers spread over them)")
	fs.IntVar(&o.Users, "users", bench.DefaultUsers, "`number` of distinct users (tokens and request bodies)")
	fs.Uint64Var(&o.Seed, "seed", bench.DefaultSeed, "`seed` of the callers' random choice of users")
	configs := fs.String("configs", strings.Join(bench.Configs(), ","), "comma-separated `configurations` to measure")
	protocols := fs.String("protocols", strings.Join(bench.Protocols(), ","), "comma-separated `protocols` (connect, grpc)")
	fs.StringVar(&o.ServerLog, "server-log", bench.ServerLogDiscard, "Palisade servers' access and decision logs: discard (disabled) or json (formatted, written to io.Discard)")
	jsonFile := fs.String("json", "", "also write the rows as JSON to `file`")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `file` (go tool pprof)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.Duration <= 0 {
		return errors.New("--duration must be positive")
	}
	o.Configs, o.Protocols = splitList(*configs), splitList(*protocols)
	o.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if err := rep.WriteMarkdown(os.Stdout); err != nil {
		return err
	}
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
	if n := rep.FailedCalls(); n > 0 {
		return fmt.Errorf("bench: %d calls failed; the figures are not valid", n)
	}
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
